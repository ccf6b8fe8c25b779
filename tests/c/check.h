/* A tiny test harness shared by the C and C++ hosts: named cases, checks
 * that report file, line and the library's last error, and a summary line
 * that scripts/test-c.sh counts ("ok - NAME" / "FAIL - NAME"). */
#ifndef VMB_TEST_CHECK_H
#define VMB_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vmbackup.h>

static int g_passed = 0, g_failed = 0, g_case_failed = 0;
static const char *g_case = "";

/* A check that goes on after a failure. */
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: [%s] check failed: %s\n", __FILE__, __LINE__, \
                    g_case, #cond);                                              \
            g_case_failed = 1;                                                   \
        }                                                                        \
    } while (0)

/* A call that must return `want`; the case stops when it does not. */
#define REQUIRE_STATUS(call, want)                                               \
    do {                                                                         \
        vmb_status s_ = (call);                                                  \
        if (s_ != (want)) {                                                      \
            fprintf(stderr, "%s:%d: [%s] %s returned %d (%s), wanted %d: %s\n",  \
                    __FILE__, __LINE__, g_case, #call, (int)s_,                  \
                    vmb_status_str((int)s_), (int)(want), vmb_last_error());     \
            g_case_failed = 1;                                                   \
            return;                                                              \
        }                                                                        \
    } while (0)

#define REQUIRE_OK(call) REQUIRE_STATUS(call, VMB_OK)

/* Stops the case when a condition fails. */
#define REQUIRE(cond)                                                            \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: [%s] requirement failed: %s\n", __FILE__,    \
                    __LINE__, g_case, #cond);                                    \
            g_case_failed = 1;                                                   \
            return;                                                              \
        }                                                                        \
    } while (0)

/* Declares `var` as the value of the environment variable `env`, which
 * names a service scripts/test starts (VMB_AZURITE, VMB_S3). Without it
 * the case is skipped, or, in CI (VMB_REQUIRE_ALL set), fails. */
#define SERVICE_OR_SKIP(var, env)                                                \
    const char *var = getenv(env);                                               \
    do {                                                                         \
        if ((var) == NULL || (var)[0] == 0) {                                    \
            const char *require_all_ = getenv("VMB_REQUIRE_ALL");                \
            REQUIRE(require_all_ == NULL || require_all_[0] == 0);               \
            printf("skipping %s: %s is not set (scripts/test starts it)\n",      \
                   g_case, (env));                                               \
            return;                                                              \
        }                                                                        \
    } while (0)

/* Whether the last error message of this thread contains `text`. */
#define LAST_ERROR_HAS(text) (strstr(vmb_last_error(), (text)) != NULL)

#define RUN(fn)                                                                  \
    do {                                                                         \
        g_case = #fn;                                                            \
        g_case_failed = 0;                                                       \
        fn();                                                                    \
        if (g_case_failed) {                                                     \
            g_failed++;                                                          \
            printf("FAIL - %s\n", #fn);                                          \
        } else {                                                                 \
            g_passed++;                                                          \
            printf("ok - %s\n", #fn);                                            \
        }                                                                        \
        fflush(stdout);                                                          \
    } while (0)

#define SUMMARY(program)                                                         \
    (printf("%s: %d passed, %d failed\n", (program), g_passed, g_failed),        \
     g_failed == 0 ? 0 : 1)

#endif
