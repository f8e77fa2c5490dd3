/*
 * store_i.h - internals of store/ shared with tests/unit/test_store*.c only.
 * Nothing outside store/ and its tests includes this file.
 */
#ifndef MGMTFS_STORE_I_H
#define MGMTFS_STORE_I_H

#include <stddef.h>

#include "store/store.h"

/* The map size store_open() starts with (grown by doubling when full). */
#define STORE_INITIAL_MAPSIZE ((size_t)64 << 20)

/*
 * store_open() with a chosen initial map size in bytes (LMDB may round it up,
 * and never makes it smaller than the data already stored).  Tests use a
 * small one to exercise the MDB_MAP_FULL growth path.
 */
int store_open_mapsize(const char *dir, int readonly, size_t mapsize, struct store **out);

/* Current map size of @st in bytes.  Thread-safe. */
size_t store_map_size(struct store *st);

/* The one place an LMDB return code (0, MDB_* or a positive errno) becomes -errno. */
int store_errno(int rc);

#endif
