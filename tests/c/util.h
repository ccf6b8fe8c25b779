/* Helpers for the C hosts: temporary folders, files, and a listing of a
 * vault's files to prove that a failed job changed nothing. C only (the
 * C++ host uses <filesystem>). */
#ifndef VMB_TEST_UTIL_H
#define VMB_TEST_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A new folder under $TMPDIR (or /tmp); the caller frees the string. */
static inline char *make_temp_dir(const char *tag) {
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0') base = "/tmp";
    size_t n = strlen(base) + strlen(tag) + 32;
    char *path = (char *)malloc(n);
    if (path == NULL) return NULL;
    snprintf(path, n, "%s/vmb-%s-XXXXXX", base, tag);
    if (mkdtemp(path) == NULL) {
        free(path);
        return NULL;
    }
    return path;
}

static inline int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void remove_tree(const char *path) {
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* `dir/name` in a new string. */
static inline char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = (char *)malloc(n);
    if (p != NULL) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static inline int write_file(const char *path, const uint8_t *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) return -1;
    size_t w = fwrite(data, 1, len, f);
    int r = fclose(f);
    return (w == len && r == 0) ? 0 : -1;
}

/* The whole file in a new buffer; its length in *len. */
static inline uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long n = ftell(f);
    rewind(f);
    uint8_t *buf = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Deterministic bytes that compress a little and differ per seed. */
static inline void fill_pattern(uint8_t *buf, size_t len, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (i % 7 == 0) ? (uint8_t)'v' : (uint8_t)x;
    }
}

/* A listing of every file under a folder (path and size), sorted, as one
 * string; folders are left out. Used to prove a vault did not change: its
 * job history (jobs/) is left out too, since a cancelled job's log is kept
 * on purpose. */
static char *g_listing = NULL;
static size_t g_listing_len = 0, g_listing_cap = 0;
static size_t g_root_len = 0;

static inline int list_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)ftw;
    if (flag != FTW_F) return 0;
    if (strncmp(path + g_root_len, "/jobs/", 6) == 0) return 0;
    char line[4096];
    int n = snprintf(line, sizeof line, "%s %lld\n", path + g_root_len, (long long)sb->st_size);
    if (n < 0) return 0;
    if (g_listing_len + (size_t)n + 1 > g_listing_cap) {
        size_t cap = (g_listing_cap + (size_t)n + 1) * 2;
        char *p = (char *)realloc(g_listing, cap);
        if (p == NULL) return -1;
        g_listing = p;
        g_listing_cap = cap;
    }
    memcpy(g_listing + g_listing_len, line, (size_t)n + 1);
    g_listing_len += (size_t)n;
    return 0;
}

static inline int cmp_lines(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static inline char *list_tree(const char *root) {
    g_listing = NULL;
    g_listing_len = g_listing_cap = 0;
    g_root_len = strlen(root);
    if (nftw(root, list_entry, 16, FTW_PHYS) != 0 || g_listing == NULL) {
        free(g_listing);
        return NULL;
    }
    /* Sort the lines so that directory order does not matter. */
    size_t count = 0;
    for (size_t i = 0; i < g_listing_len; i++)
        if (g_listing[i] == '\n') count++;
    char **lines = (char **)malloc((count + 1) * sizeof *lines);
    char *out = (char *)malloc(g_listing_len + 1);
    if (lines == NULL || out == NULL) {
        free(lines);
        free(out);
        free(g_listing);
        return NULL;
    }
    size_t k = 0;
    for (char *s = strtok(g_listing, "\n"); s != NULL; s = strtok(NULL, "\n")) lines[k++] = s;
    qsort(lines, k, sizeof *lines, cmp_lines);
    out[0] = '\0';
    size_t at = 0;
    for (size_t i = 0; i < k; i++) {
        size_t n = strlen(lines[i]);
        memcpy(out + at, lines[i], n);
        out[at + n] = '\n';
        at += n + 1;
    }
    out[at] = '\0';
    free(lines);
    free(g_listing);
    g_listing = NULL;
    return out;
}

static inline void sleep_ms(long ms) {
    struct timespec t;
    t.tv_sec = ms / 1000;
    t.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

#endif
