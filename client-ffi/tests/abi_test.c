/*
 * The C ABI end to end, as an app uses it: a C program linked against
 * libcodeedex_ffi, run by tests/tests/ffi.rs against the real server
 * (usually under valgrind).
 *
 * Usage: abi_test SERVER_URL WORK_DIR EMAIL ACCESS_TOKEN_TTL_SECS
 *        abi_test --abi-version    (prints the library's ABI version)
 *
 * What only the harness can do (read a sign-in code from the server's mail,
 * stop and start the server, run the codeedex command line, list tasks over
 * REST) the program asks for on standard output, one line "REQ <words
 * separated by tabs>", and reads the answer as one line on standard input.
 * Everything else it checks itself; the first failed check prints FAIL
 * with its line and exits with status 1. Waits poll with a deadline.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codeedex.h"

/* The longest any wait lasts (valgrind makes everything slower). */
#define WAIT_SECS 90

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL abi_test.c:%d: %s: ", __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static pthread_t main_thread;

/* ---- events, as each device's callback records them ---- */

#define MAX_EVENTS 4096

typedef struct {
    const char *name;
    CdxClient *client;
    pthread_mutex_t lock;
    char *events[MAX_EVENTS];
    size_t count;
    /* Callbacks that ran on the app's (main) thread: must stay 0. */
    int on_main_thread;
    /* Set by the main thread: the next callback calls back into the library. */
    bool reenter;
    /* What the re-entering callback got. */
    bool reentered;
    CdxStatus close_inside, set_callback_inside, list_inside;
} Device;

static void on_event(void *user_data, char *event_json) {
    Device *device = user_data;
    pthread_mutex_lock(&device->lock);
    if (pthread_equal(pthread_self(), main_thread)) {
        device->on_main_thread++;
    }
    if (device->count < MAX_EVENTS) {
        /* The string is ours now: keep it, free it at the end. */
        device->events[device->count++] = event_json;
    } else {
        cdx_string_free(event_json);
    }
    bool reenter = device->reenter;
    device->reenter = false;
    pthread_mutex_unlock(&device->lock);
    if (reenter) {
        /* From inside the callback: closing or replacing it is refused,
         * any other call works. */
        CdxStatus close_inside = cdx_client_close(device->client);
        CdxStatus set_inside = cdx_set_event_callback(device->client, NULL, NULL);
        char *list = NULL;
        CdxStatus list_inside = cdx_tasks_list(device->client, "{\"status\":\"all\"}", &list);
        cdx_string_free(list);
        pthread_mutex_lock(&device->lock);
        device->close_inside = close_inside;
        device->set_callback_inside = set_inside;
        device->list_inside = list_inside;
        device->reentered = true;
        pthread_mutex_unlock(&device->lock);
    }
}

/* Whether an event holding every needle (up to three) has arrived. */
static bool has_event(Device *d, const char *a, const char *b, const char *c) {
    bool found = false;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->count && !found; i++) {
        const char *e = d->events[i];
        found = strstr(e, a) && (!b || strstr(e, b)) && (!c || strstr(e, c));
    }
    pthread_mutex_unlock(&d->lock);
    return found;
}

/* ---- small helpers ---- */

static double now_secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The calling thread's last error, copied into a static buffer. */
static const char *last_error(void) {
    static char buffer[1024];
    char *message = cdx_last_error();
    snprintf(buffer, sizeof buffer, "%s", message ? message : "(no last error)");
    cdx_string_free(message);
    return buffer;
}

/* Checks a successful call and returns its out string. */
#define OK(call, out)                                                          \
    do {                                                                       \
        CdxStatus status_ = (call);                                            \
        CHECK(status_ == CDX_STATUS_OK, "status %d: %s", (int)status_, last_error()); \
        (void)(out);                                                           \
    } while (0)

/* Checks a failed call: its status, its last error, and its out pointer
 * (when one was given) reset to NULL. */
static char *const SENTINEL = (char *)"not touched";

static void expect_failure(int line, CdxStatus got, CdxStatus want, char *out) {
    if (got != want) {
        fprintf(stderr, "FAIL abi_test.c:%d: status %d, wanted %d (%s)\n", line, (int)got,
                (int)want, last_error());
        exit(1);
    }
    char *message = cdx_last_error();
    if (!message || !*message) {
        fprintf(stderr, "FAIL abi_test.c:%d: no last error after status %d\n", line, (int)got);
        exit(1);
    }
    cdx_string_free(message);
    if (out != NULL && out != SENTINEL) {
        fprintf(stderr, "FAIL abi_test.c:%d: the out string was set on failure\n", line);
        exit(1);
    }
}
#define FAILS(call, want) expect_failure(__LINE__, (call), (want), NULL)
#define FAILS_OUT(call, want)                           \
    do {                                                \
        out = SENTINEL;                                 \
        CdxStatus s_ = (call);                          \
        CHECK(out == NULL || s_ == CDX_STATUS_NULL_ARGUMENT, \
              "*out not reset to NULL (status %d)", (int)s_); \
        expect_failure(__LINE__, s_, (want), out);      \
    } while (0)

static size_t count_of(const char *haystack, const char *needle) {
    size_t n = 0;
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* The value of the first "key":"..." in a JSON text (no escapes expected
 * in ids), in a fresh buffer. */
static char *string_field(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *start = strstr(json, pattern);
    CHECK(start, "no %s in %s", key, json);
    start += strlen(pattern);
    const char *end = strchr(start, '"');
    CHECK(end, "unterminated %s in %s", key, json);
    return strndup(start, (size_t)(end - start));
}

/* The JSON object (no nesting expected) in an array that contains needle. */
static char *object_with(const char *json, const char *needle) {
    const char *at = strstr(json, needle);
    CHECK(at, "no %s in %s", needle, json);
    const char *start = at;
    while (start > json && *start != '{') start--;
    const char *end = strchr(at, '}');
    CHECK(end, "unterminated object in %s", json);
    return strndup(start, (size_t)(end - start + 1));
}

/* ---- the harness ---- */

/* Asks the harness for something; returns its one-line answer. */
static char *ask(const char *words) {
    printf("REQ %s\n", words);
    fflush(stdout);
    char *line = NULL;
    size_t size = 0;
    ssize_t n = getline(&line, &size, stdin);
    CHECK(n > 0, "the harness did not answer %s", words);
    if (line[n - 1] == '\n') line[n - 1] = '\0';
    CHECK(strncmp(line, "ERR", 3) != 0, "the harness failed %s: %s", words, line);
    return line;
}

/* ---- devices ---- */

static const char *server_url;
static const char *work_dir;
static const char *email;

/* The settings of the device `name`: its own data directory under work_dir. */
static void settings_of(const char *name, char *settings, size_t size) {
    snprintf(settings, size,
             "{\"data_dir\":\"%s/%s\",\"server_url\":\"%s\",\"device_name\":\"%s\","
             "\"token_store\":\"file\"}",
             work_dir, name, server_url, name);
}

static void open_device(Device *d, const char *name) {
    char settings[2048];
    settings_of(name, settings, sizeof settings);
    d->name = name;
    OK(cdx_client_open(settings, &d->client), 0);
    CHECK(d->client != NULL, "no handle");
    OK(cdx_set_event_callback(d->client, on_event, d), 0);
}

static void close_device(Device *d) {
    OK(cdx_client_close(d->client), 0);
    d->client = NULL;
}

/* The out string of a successful call. `out` is read after the call has
 * run (C does not order the evaluation of arguments). */
static char *call_json(CdxStatus status, char **out) {
    CHECK(status == CDX_STATUS_OK, "status %d: %s", (int)status, last_error());
    CHECK(*out != NULL, "no out string");
    return *out;
}

static char *auth_status(Device *d) {
    char *out = NULL;
    return call_json(cdx_auth_status(d->client, &out), &out);
}

static char *sync_status(Device *d) {
    char *out = NULL;
    return call_json(cdx_sync_status(d->client, &out), &out);
}

static void sign_in(Device *d) {
    char identifier[256];
    snprintf(identifier, sizeof identifier, "{\"email\":\"%s\"}", email);
    char *out = NULL;
    char *sent = call_json(cdx_request_code(d->client, identifier, &out), &out);
    CHECK(strstr(sent, "expires_in"), "%s", sent);
    cdx_string_free(sent);
    char request[300];
    snprintf(request, sizeof request, "code\t%s", email);
    char *code = ask(request);
    /* A wrong code first: refused by the server, with its problem code. */
    out = NULL;
    CdxStatus wrong = cdx_verify_code(d->client, identifier, "000000", &out);
    if (strcmp(code, "000000") != 0) {
        expect_failure(__LINE__, wrong, CDX_STATUS_SERVER_REFUSED, out);
    }
    char *me = call_json(cdx_verify_code(d->client, identifier, code, &out), &out);
    CHECK(strstr(me, "\"state\":\"signed_in\"") && strstr(me, email), "%s", me);
    cdx_string_free(me);
    free(code);
}

static char *task_json(Device *d, const char *id) {
    char *out = NULL;
    return call_json(cdx_task_get(d->client, id, &out), &out);
}

static char *list_json(Device *d, const char *filter) {
    char *out = NULL;
    return call_json(cdx_tasks_list(d->client, filter, &out), &out);
}

/* Polls until the device's sync status holds `needle`, calling the API
 * from this thread meanwhile. */
static void wait_sync_state(Device *d, const char *needle) {
    double deadline = now_secs() + WAIT_SECS;
    for (;;) {
        char *status = sync_status(d);
        bool done = strstr(status, needle) != NULL;
        if (!done && now_secs() > deadline) {
            CHECK(false, "%s: no %s within %d s: %s", d->name, needle, WAIT_SECS, status);
        }
        cdx_string_free(status);
        if (done) return;
        pause_ms(50);
    }
}

/* Polls until an event with every needle has arrived on `d`, while this
 * (the app's) thread keeps calling the API. Returns how many calls it made. */
static int wait_event(Device *d, const char *a, const char *b, const char *c) {
    double deadline = now_secs() + WAIT_SECS;
    int calls = 0;
    while (!has_event(d, a, b, c)) {
        CHECK(now_secs() < deadline, "%s: no event with %s %s %s within %d s", d->name, a,
              b ? b : "", c ? c : "", WAIT_SECS);
        char *list = list_json(d, "{\"status\":\"all\"}");
        cdx_string_free(list);
        calls++;
        pause_ms(20);
    }
    return calls;
}

/* Polls until task `id` on `d` holds both needles. */
static void wait_task(Device *d, const char *id, const char *a, const char *b) {
    double deadline = now_secs() + WAIT_SECS;
    for (;;) {
        char *out = NULL;
        CdxStatus status = cdx_task_get(d->client, id, &out);
        bool done = status == CDX_STATUS_OK && strstr(out, a) && (!b || strstr(out, b));
        if (!done && now_secs() > deadline) {
            CHECK(false, "%s: task %s never held %s %s: %s", d->name, id, a, b ? b : "",
                  out ? out : last_error());
        }
        cdx_string_free(out);
        if (done) return;
        pause_ms(50);
    }
}

/* ---- every function with NULL, invalid UTF-8 and invalid JSON ---- */

static void bad_arguments(void) {
    static const char bad_utf8[] = {'a', (char)0xff, (char)0xfe, '\0'};
    static const char bad_utf8_json[] = {'{', '"', 't', 'i', 't', 'l', 'e', '"', ':', '"',
                                         (char)0xc3, (char)0x28, '"', '}', '\0'};
    const char *not_json = "}{ not JSON";
    const char *some_id = "2TixDPyw";
    char *out = NULL;
    CdxClient *handle = NULL;

    CHECK(cdx_abi_version() == CDX_ABI_VERSION, "ABI %u", cdx_abi_version());
    cdx_string_free(NULL);

    /* Open. */
    FAILS(cdx_client_open(NULL, &handle), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_client_open("{}", NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_client_open(bad_utf8, &handle), CDX_STATUS_INVALID_UTF8);
    FAILS(cdx_client_open(not_json, &handle), CDX_STATUS_INVALID_JSON);
    FAILS(cdx_client_open("{}", &handle), CDX_STATUS_INVALID_INPUT);
    FAILS(cdx_client_open("{\"data_dir\":\"/tmp/x\",\"server_url\":\"ftp://x\"}", &handle),
          CDX_STATUS_INVALID_INPUT);
    FAILS(cdx_client_open("{\"data_dir\":\"/tmp/x\",\"server_url\":\"http://x\",\"colour\":1}",
                          &handle),
          CDX_STATUS_INVALID_INPUT);
    FAILS(cdx_client_open("{\"data_dir\":\"/tmp/x\",\"server_url\":\"http://x\","
                          "\"token_store\":\"cloud\"}",
                          &handle),
          CDX_STATUS_INVALID_INPUT);
    CHECK(handle == NULL, "a failed open left a handle");

    Device probe = {.name = "probe"};
    pthread_mutex_init(&probe.lock, NULL);
    open_device(&probe, "probe");
    CdxClient *h = probe.client;
    /* A success clears the last error. */
    char *s = auth_status(&probe);
    CHECK(strstr(s, "\"state\":\"signed_out\""), "%s", s);
    cdx_string_free(s);
    char *none = cdx_last_error();
    CHECK(none == NULL, "a successful call left a last error: %s", none);

    /* Close and the callback. */
    FAILS(cdx_client_close(NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_set_event_callback(NULL, on_event, NULL), CDX_STATUS_NULL_ARGUMENT);

    /* Account. */
    FAILS_OUT(cdx_auth_status(NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_auth_status(h, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_auth_check(NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_auth_check(h, NULL), CDX_STATUS_NULL_ARGUMENT);
    const char *who = "{\"email\":\"nobody@example.com\"}";
    FAILS_OUT(cdx_request_code(NULL, who, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_request_code(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_request_code(h, who, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_request_code(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_request_code(h, bad_utf8_json, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_request_code(h, not_json, &out), CDX_STATUS_INVALID_JSON);
    FAILS_OUT(cdx_request_code(h, "{\"email\":1}", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_request_code(h, "{}", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_request_code(h, "{\"email\":\"a@b.c\",\"phone\":\"+1555\"}", &out),
              CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_verify_code(NULL, who, "123456", &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_verify_code(h, NULL, "123456", &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_verify_code(h, who, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_verify_code(h, who, "123456", NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_verify_code(h, bad_utf8, "123456", &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_verify_code(h, who, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_verify_code(h, not_json, "123456", &out), CDX_STATUS_INVALID_JSON);
    FAILS_OUT(cdx_sign_out(NULL, CDX_SIGN_OUT_THIS_DEVICE, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_sign_out(h, CDX_SIGN_OUT_THIS_DEVICE, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_sign_out(h, 7, &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_sign_out(h, -1, &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_sessions(NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_sessions(h, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_sessions(h, &out), CDX_STATUS_NOT_SIGNED_IN);
    FAILS(cdx_revoke_session(NULL, "x"), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_revoke_session(h, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_revoke_session(h, bad_utf8), CDX_STATUS_INVALID_UTF8);
    FAILS(cdx_revoke_session(h, "not a session id"), CDX_STATUS_INVALID_INPUT);

    /* Sync. */
    FAILS(cdx_sync_start(NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_sync_stop(NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_sync_once(NULL, 1000, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_sync_once(h, 1000, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_sync_once(h, 1000, &out), CDX_STATUS_NOT_SIGNED_IN);
    FAILS_OUT(cdx_sync_status(NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_sync_status(h, NULL), CDX_STATUS_NULL_ARGUMENT);

    /* Tasks. */
    FAILS_OUT(cdx_tasks_list(NULL, "{}", &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_tasks_list(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_tasks_list(h, "{}", NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_tasks_list(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_tasks_list(h, not_json, &out), CDX_STATUS_INVALID_JSON);
    FAILS_OUT(cdx_tasks_list(h, "{\"status\":\"later\"}", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_tasks_list(h, "{\"due\":\"someday\"}", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_tasks_list(h, "{\"colour\":\"red\"}", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_task_get(NULL, some_id, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_get(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_get(h, some_id, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_get(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_task_get(h, some_id, &out), CDX_STATUS_NOT_FOUND);
    FAILS_OUT(cdx_task_get(h, "", &out), CDX_STATUS_INVALID_INPUT);
    const char *task = "{\"title\":\"t\"}";
    FAILS_OUT(cdx_task_create(NULL, task, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_create(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_create(h, task, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_create(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_task_create(h, bad_utf8_json, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_task_create(h, not_json, &out), CDX_STATUS_INVALID_JSON);
    FAILS_OUT(cdx_task_create(h, "[]", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_task_create(h, "{\"title\":\"  \"}", &out), CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_task_create(h, "{\"title\":\"t\",\"priority\":\"urgent\"}", &out),
              CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_task_create(h, "{\"title\":\"t\",\"colour\":\"red\"}", &out),
              CDX_STATUS_INVALID_INPUT);
    FAILS_OUT(cdx_task_update(NULL, some_id, "{}", &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_update(h, NULL, "{}", &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_update(h, some_id, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_update(h, some_id, "{}", NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_update(h, bad_utf8, "{}", &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_task_update(h, some_id, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_task_update(h, some_id, not_json, &out), CDX_STATUS_INVALID_JSON);
    FAILS_OUT(cdx_task_complete(NULL, some_id, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_complete(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_complete(h, some_id, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_complete(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS_OUT(cdx_task_reopen(NULL, some_id, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_reopen(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_reopen(h, some_id, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_reopen(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);
    FAILS(cdx_task_delete(NULL, some_id), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_delete(h, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_delete(h, bad_utf8), CDX_STATUS_INVALID_UTF8);
    FAILS(cdx_task_delete(h, some_id), CDX_STATUS_NOT_FOUND);
    FAILS_OUT(cdx_task_history(NULL, some_id, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_history(h, NULL, &out), CDX_STATUS_NULL_ARGUMENT);
    FAILS(cdx_task_history(h, some_id, NULL), CDX_STATUS_NULL_ARGUMENT);
    FAILS_OUT(cdx_task_history(h, bad_utf8, &out), CDX_STATUS_INVALID_UTF8);

    /* Tasks work before anyone signs in, offline; an ambiguous prefix says so. */
    char *one = call_json(cdx_task_create(h, "{\"title\":\"offline one\"}", &out), &out);
    char *two = call_json(cdx_task_create(h, "{\"title\":\"offline two\"}", &out), &out);
    char *id_one = string_field(one, "id");
    char *id_two = string_field(two, "id");
    if (id_one[0] == id_two[0]) {
        char prefix[2] = {id_one[0], '\0'};
        FAILS_OUT(cdx_task_get(h, prefix, &out), CDX_STATUS_AMBIGUOUS_ID);
    }
    char *list = list_json(&probe, "{}");
    CHECK(count_of(list, "\"id\":") == 2, "%s", list);
    cdx_string_free(list);
    wait_event(&probe, "\"event\":\"task_added\"", id_one, "\"origin\":\"local\"");
    wait_event(&probe, "\"event\":\"task_added\"", id_two, "\"origin\":\"local\"");
    cdx_string_free(one);
    cdx_string_free(two);
    free(id_one);
    free(id_two);

    close_device(&probe);
    pthread_mutex_lock(&probe.lock);
    for (size_t i = 0; i < probe.count; i++) cdx_string_free(probe.events[i]);
    pthread_mutex_unlock(&probe.lock);
    pthread_mutex_destroy(&probe.lock);
    fprintf(stderr, "abi_test: bad arguments: every function refused them\n");
}

/* ---- the stories ---- */

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--abi-version") == 0) {
        /* The statically linked build's smoke test. */
        printf("%u\n", cdx_abi_version());
        return cdx_abi_version() == CDX_ABI_VERSION ? 0 : 1;
    }
    CHECK(argc == 5, "usage: abi_test SERVER_URL WORK_DIR EMAIL ACCESS_TOKEN_TTL_SECS");
    server_url = argv[1];
    work_dir = argv[2];
    email = argv[3];
    int token_ttl = atoi(argv[4]);
    main_thread = pthread_self();
    char *out = NULL;

    bad_arguments();

    /* Sign in with a code; close and reopen: still signed in, no new code. */
    Device a = {0}, b = {0};
    pthread_mutex_init(&a.lock, NULL);
    pthread_mutex_init(&b.lock, NULL);
    open_device(&a, "laptop-a");
    char *s = sync_status(&a);
    CHECK(strstr(s, "\"state\":\"signed_out\""), "%s", s);
    cdx_string_free(s);
    sign_in(&a);
    wait_event(&a, "\"event\":\"auth_status\"", "logged_in", NULL);
    close_device(&a);
    open_device(&a, "laptop-a");
    s = auth_status(&a);
    CHECK(strstr(s, "\"state\":\"signed_in\"") && strstr(s, email), "reopened: %s", s);
    cdx_string_free(s);
    /* One handle per data directory: a second open of it is refused. */
    char settings[2048];
    settings_of("laptop-a", settings, sizeof settings);
    CdxClient *twice = NULL;
    FAILS(cdx_client_open(settings, &twice), CDX_STATUS_STORAGE);
    CHECK(twice == NULL, "a refused open left a handle");

    /* The access token expires; the next server call refreshes it unseen. */
    sleep((unsigned)token_ttl + 1);
    s = call_json(cdx_auth_check(a.client, &out), &out);
    CHECK(strstr(s, "\"state\":\"signed_in\""), "after the token expired: %s", s);
    cdx_string_free(s);
    s = call_json(cdx_sessions(a.client, &out), &out);
    CHECK(count_of(s, "\"current\":true") == 1, "%s", s);
    cdx_string_free(s);
    fprintf(stderr, "abi_test: signed in, reopened, refreshed\n");

    /* A second device; both sync live. */
    open_device(&b, "phone-b");
    sign_in(&b);
    OK(cdx_sync_start(a.client), 0);
    OK(cdx_sync_start(b.client), 0);
    OK(cdx_sync_start(a.client), 0); /* a second start is a no-op */
    wait_sync_state(&a, "up_to_date");
    wait_sync_state(&b, "up_to_date");

    /* A task made on A arrives on B through B's callback, on a library
     * thread, while this thread keeps calling. */
    char *milk = call_json(
        cdx_task_create(a.client,
                        "{\"title\":\"buy milk\",\"tags\":[\"home\"],\"due\":\"2030-01-02\","
                        "\"priority\":\"high\"}",
                        &out),
        &out);
    char *milk_id = string_field(milk, "id");
    cdx_string_free(milk);
    int calls = wait_event(&b, "\"event\":\"task_added\"", milk_id, "\"origin\":\"remote\"");
    fprintf(stderr, "abi_test: B's callback had the task after %d calls from the app thread\n",
            calls);
    s = task_json(&b, milk_id);
    CHECK(strstr(s, "\"title\":\"buy milk\"") && strstr(s, "\"due\":\"2030-01-02\"") &&
              strstr(s, "\"priority\":\"high\""),
          "%s", s);
    cdx_string_free(s);

    /* Calling back into the library from inside the callback. */
    pthread_mutex_lock(&a.lock);
    a.reenter = true;
    pthread_mutex_unlock(&a.lock);
    char *spare = call_json(cdx_task_create(a.client, "{\"title\":\"spare\"}", &out), &out);
    char *spare_id = string_field(spare, "id");
    cdx_string_free(spare);
    double deadline = now_secs() + WAIT_SECS;
    for (;;) {
        pthread_mutex_lock(&a.lock);
        bool done = a.reentered;
        pthread_mutex_unlock(&a.lock);
        if (done) break;
        CHECK(now_secs() < deadline, "the re-entering callback never ran");
        pause_ms(20);
    }
    CHECK(a.close_inside == CDX_STATUS_WRONG_THREAD, "close inside: %d", (int)a.close_inside);
    CHECK(a.set_callback_inside == CDX_STATUS_WRONG_THREAD, "set inside: %d",
          (int)a.set_callback_inside);
    CHECK(a.list_inside == CDX_STATUS_OK, "list inside: %d", (int)a.list_inside);

    /* Offline: the server stops; A edits the title, B the notes of the same
     * task; the server comes back; both converge. */
    wait_event(&b, "\"event\":\"task_added\"", spare_id, NULL);
    free(ask("server-stop"));
    wait_sync_state(&a, "\"state\":\"offline\"");
    wait_sync_state(&b, "\"state\":\"offline\"");
    s = call_json(cdx_task_update(a.client, milk_id, "{\"title\":\"buy oat milk\"}", &out), &out);
    cdx_string_free(s);
    s = call_json(cdx_task_update(b.client, milk_id, "{\"notes\":\"two litres\"}", &out), &out);
    cdx_string_free(s);
    s = sync_status(&a);
    CHECK(!strstr(s, "\"unsynced_documents\":0"), "A's edit is not waiting: %s", s);
    cdx_string_free(s);
    out = SENTINEL;
    CdxStatus offline = cdx_sync_once(a.client, 2000, &out);
    CHECK(offline == CDX_STATUS_OFFLINE || offline == CDX_STATUS_TIMEOUT, "status %d: %s",
          (int)offline, last_error());
    CHECK(out == NULL, "an out string after a failed sync");
    free(ask("server-start"));
    wait_task(&a, milk_id, "\"title\":\"buy oat milk\"", "\"notes\":\"two litres\"");
    wait_task(&b, milk_id, "\"title\":\"buy oat milk\"", "\"notes\":\"two litres\"");
    wait_event(&a, "\"event\":\"task_changed\"", milk_id, "\"origin\":\"remote\"");
    fprintf(stderr, "abi_test: two devices converged after offline edits\n");

    /* The codeedex command line on the same account agrees, and so does REST. */
    free(ask("cli-login"));
    char *cli_added = ask("cli\tadd\tfrom the command line\t--tag\thome\t--json");
    char *cli_id = string_field(cli_added, "id");
    free(cli_added);
    wait_event(&a, "\"event\":\"task_added\"", cli_id, "\"origin\":\"remote\"");
    s = call_json(cdx_task_complete(a.client, milk_id, &out), &out);
    CHECK(strstr(s, "\"done\":true"), "%s", s);
    cdx_string_free(s);
    s = call_json(cdx_task_reopen(a.client, milk_id, &out), &out);
    CHECK(strstr(s, "\"done\":false"), "%s", s);
    cdx_string_free(s);
    s = call_json(cdx_task_complete(a.client, milk_id, &out), &out);
    cdx_string_free(s);
    OK(cdx_task_delete(a.client, spare_id), 0);
    FAILS_OUT(cdx_task_get(a.client, spare_id, &out), CDX_STATUS_NOT_FOUND);
    s = call_json(cdx_sync_once(a.client, 30000, &out), &out);
    CHECK(strstr(s, "last_sync"), "%s", s);
    cdx_string_free(s);
    char *mine = list_json(&a, "{\"status\":\"all\"}");
    char *theirs = ask("cli\tls\t--all\t--json");
    /* The server hears of the deletion through the library's own REST call,
     * soon after the sync. */
    char *rest = NULL;
    deadline = now_secs() + WAIT_SECS;
    for (;;) {
        rest = ask("rest-list");
        if (!strstr(rest, spare_id)) break;
        CHECK(now_secs() < deadline, "REST still lists the deleted task: %s", rest);
        free(rest);
        pause_ms(200);
    }
    size_t n = count_of(mine, "\"id\":");
    CHECK(n == 2, "A lists %zu tasks: %s", n, mine);
    CHECK(count_of(theirs, "\"id\":") == n, "the CLI lists %s, A %s", theirs, mine);
    CHECK(count_of(rest, "\"id\":") == n, "REST lists %s, A %s", rest, mine);
    CHECK(strstr(theirs, milk_id) && strstr(theirs, cli_id) && !strstr(theirs, spare_id),
          "the CLI: %s", theirs);
    CHECK(strstr(rest, milk_id) && strstr(rest, cli_id) && !strstr(rest, spare_id), "REST: %s",
          rest);
    char *milk_there = object_with(theirs, milk_id);
    CHECK(strstr(milk_there, "\"done\":true") && strstr(milk_there, "oat milk") &&
              strstr(milk_there, "two litres"),
          "the CLI's milk: %s", milk_there);
    free(milk_there);
    milk_there = object_with(rest, milk_id);
    CHECK(strstr(milk_there, "\"done\":true") && strstr(milk_there, "oat milk"), "REST's milk: %s",
          milk_there);
    free(milk_there);
    cdx_string_free(mine);
    free(theirs);
    free(rest);
    fprintf(stderr, "abi_test: the C client, the CLI and REST agree\n");

    /* The list's filters are the CLI's. */
    s = list_json(&a, "{}");
    CHECK(count_of(s, "\"id\":") == 1 && strstr(s, cli_id), "open: %s", s);
    cdx_string_free(s);
    s = list_json(&a, "{\"status\":\"done\",\"tag\":\"HOME\",\"search\":\"OAT\"}");
    CHECK(count_of(s, "\"id\":") == 1 && strstr(s, milk_id), "done, tag, search: %s", s);
    cdx_string_free(s);
    s = list_json(&a, "{\"status\":\"all\",\"due\":\"2030-01-02\"}");
    CHECK(count_of(s, "\"id\":") == 1 && strstr(s, milk_id), "due: %s", s);
    cdx_string_free(s);
    s = list_json(&a, "{\"status\":\"all\",\"due\":\"overdue\"}");
    CHECK(count_of(s, "\"id\":") == 0, "overdue: %s", s);
    cdx_string_free(s);
    /* A unique prefix is enough. */
    char prefix[9];
    snprintf(prefix, sizeof prefix, "%.8s", milk_id);
    s = task_json(&a, prefix);
    CHECK(strstr(s, milk_id), "%s", s);
    cdx_string_free(s);
    s = call_json(cdx_task_history(a.client, milk_id, &out), &out);
    CHECK(count_of(s, "\"seq\":") >= 3 && strstr(s, "\"title\"") && strstr(s, "\"notes\""),
          "history: %s", s);
    cdx_string_free(s);

    /* Live sync stops and starts again: B, stopped, is offline; started,
     * it catches up with what A made meanwhile. */
    OK(cdx_sync_stop(b.client), 0);
    s = sync_status(&b);
    CHECK(strstr(s, "\"state\":\"offline\""), "stopped: %s", s);
    cdx_string_free(s);
    char *later = call_json(cdx_task_create(a.client, "{\"title\":\"while B rested\"}", &out),
                            &out);
    char *later_id = string_field(later, "id");
    cdx_string_free(later);
    OK(cdx_sync_start(b.client), 0);
    wait_event(&b, "\"event\":\"task_added\"", later_id, "\"origin\":\"remote\"");
    free(later_id);

    /* Sessions: A revokes B; B's refresh is refused and its callback says
     * signed out. */
    char *sessions = call_json(cdx_sessions(a.client, &out), &out);
    CHECK(count_of(sessions, "\"current\":true") == 1 && count_of(sessions, "\"id\":") >= 4,
          "%s", sessions);
    char *b_session = object_with(sessions, "\"device_name\":\"phone-b\"");
    char *b_id = string_field(b_session, "id");
    cdx_string_free(sessions);
    free(b_session);
    OK(cdx_revoke_session(a.client, b_id), 0);
    FAILS(cdx_revoke_session(a.client, b_id), CDX_STATUS_NOT_FOUND);
    wait_event(&b, "\"event\":\"auth_status\"", "logged_out", NULL);
    wait_sync_state(&b, "\"state\":\"signed_out\"");
    s = auth_status(&b);
    CHECK(strstr(s, "\"state\":\"signed_out\""), "%s", s);
    cdx_string_free(s);
    s = call_json(cdx_auth_check(b.client, &out), &out);
    CHECK(strstr(s, "\"state\":\"signed_out\""), "%s", s);
    cdx_string_free(s);
    /* B keeps its tasks. */
    s = list_json(&b, "{\"status\":\"all\"}");
    CHECK(strstr(s, milk_id), "%s", s);
    cdx_string_free(s);
    free(b_id);
    fprintf(stderr, "abi_test: a revoked device reported signed out\n");

    /* Sign out the others (the CLI and the REST sign-in), then this device. */
    s = call_json(cdx_sign_out(a.client, CDX_SIGN_OUT_OTHERS, &out), &out);
    CHECK(strstr(s, "\"sessions_ended\":2") && strstr(s, "\"server_told\":true"), "%s", s);
    cdx_string_free(s);
    s = call_json(cdx_sessions(a.client, &out), &out);
    CHECK(count_of(s, "\"id\":") == 1, "%s", s);
    cdx_string_free(s);
    s = call_json(cdx_sign_out(a.client, CDX_SIGN_OUT_THIS_DEVICE, &out), &out);
    CHECK(strstr(s, "\"sessions_ended\":1"), "%s", s);
    cdx_string_free(s);
    s = auth_status(&a);
    CHECK(strstr(s, "\"state\":\"signed_out\""), "%s", s);
    cdx_string_free(s);
    wait_event(&a, "\"event\":\"auth_status\"", "logged_out", NULL);

    close_device(&a);
    close_device(&b);
    CHECK(a.on_main_thread == 0 && b.on_main_thread == 0, "callbacks ran on the app thread");
    fprintf(stderr, "abi_test: %zu and %zu events, all on the library's threads\n", a.count,
            b.count);
    Device *devices[] = {&a, &b};
    for (size_t d = 0; d < 2; d++) {
        for (size_t i = 0; i < devices[d]->count; i++) cdx_string_free(devices[d]->events[i]);
        pthread_mutex_destroy(&devices[d]->lock);
    }
    free(milk_id);
    free(spare_id);
    free(cli_id);
    printf("DONE\n");
    fflush(stdout);
    return 0;
}
