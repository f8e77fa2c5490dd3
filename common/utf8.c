/*
 * utf8.c - UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF).
 */
#include "common/utf8.h"

#include <stdint.h>
#include <string.h>

size_t utf8_len(const unsigned char *s)
{
	size_t n, i;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;	/* also stops at the terminating NUL */
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

int utf8_sanitize(const char *in, char *out, size_t len)
{
	static const char repl[] = "\xef\xbf\xbd";	/* U+FFFD */
	const unsigned char *p = (const unsigned char *)in;
	size_t o = 0;
	int changed = 0;

	if (len == 0)
		return 0;
	while (*p) {
		size_t n = utf8_len(p), w = n ? n : sizeof(repl) - 1;

		if (o + w >= len)
			break;
		memcpy(out + o, n ? (const char *)p : repl, w);
		changed |= !n;
		o += w;
		p += n ? n : 1;
	}
	out[o] = '\0';
	return changed;
}
