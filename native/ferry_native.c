// Ferry's native helpers (N-API, no other dependency): fallocate(2) to reserve file blocks before
// writing them. Writing into a freshly extended file makes the kernel allocate blocks page by page
// (delayed allocation), which costs several times the copy itself; reserving them first, as
// qemu-img does, avoids that.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int err) {
  napi_value code, msg, error;
  const char* name = err == ENOSPC ? "ENOSPC" : err == EOPNOTSUPP ? "EOPNOTSUPP" : err == EBADF ? "EBADF" : err == EDQUOT ? "EDQUOT"
                     : err == EFBIG ? "EFBIG" : err == ENOSYS ? "ENOSYS" : err == EINVAL ? "EINVAL" : "EIO";
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_value errnoValue;
  napi_create_int32(env, err, &errnoValue);
  napi_set_named_property(env, error, "errno", errnoValue);
  napi_throw(env, error);
  return NULL;
}

// fallocate(fd, offset, length, keepSize): reserves blocks; throws an Error with .code on failure.
static napi_value Fallocate(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) {
    napi_throw_type_error(env, NULL, "fallocate(fd, offset, length[, keepSize])");
    return NULL;
  }
  int32_t fd;
  int64_t offset, length;
  bool keep = false;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "fallocate: fd, offset and length must be numbers");
    return NULL;
  }
  if (argc > 3) napi_get_value_bool(env, argv[3], &keep);
  if (offset < 0 || length <= 0) {
    napi_throw_range_error(env, NULL, "fallocate: offset must be >= 0 and length > 0");
    return NULL;
  }
  int rc;
  do {
    rc = fallocate(fd, keep ? FALLOC_FL_KEEP_SIZE : 0, (off_t)offset, (off_t)length);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return throw_errno(env, errno);
  return NULL;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "fallocate", NAPI_AUTO_LENGTH, Fallocate, NULL, &fn);
  napi_set_named_property(env, exports, "fallocate", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
