// Ferry's native helpers (N-API, no other dependency): fallocate(2) to reserve file blocks before
// writing them. Writing into a freshly extended file makes the kernel allocate blocks page by page
// (delayed allocation), which costs several times the copy itself; reserving them first, as
// qemu-img does, avoids that. And inflate into a caller's buffer (zlib, as bundled and exported by
// Node.js itself): a compressed cluster decodes straight into the chunk it belongs to, with one
// reusable z_stream per thread, instead of a new zlib object and an output copy per cluster.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>
#include <zlib.h>

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

static bool bytes_of(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  void* p;
  if (napi_get_typedarray_info(env, v, &type, len, &p, &ab, &offset) != napi_ok || type != napi_uint8_array) return false;
  *data = (uint8_t*)p;
  return true;
}

// One inflate stream per thread (worker threads each have their own), reset between units.
static __thread z_stream zs;
static __thread int zs_window = 0; // windowBits the stream was set up with; 0: none yet

// inflateInto(input, output, zlibHeader): decodes one deflate stream (raw, or with the zlib
// header) from `input` into `output`, stopping when `output` is full or the stream ends; returns
// the bytes produced. Throws an Error with code 'EINFLATE' on damaged data.
static napi_value InflateInto(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *in, *out;
  size_t inLen, outLen;
  bool header = false;
  if (argc < 2 || !bytes_of(env, argv[0], &in, &inLen) || !bytes_of(env, argv[1], &out, &outLen)) {
    napi_throw_type_error(env, NULL, "inflateInto(input: Uint8Array, output: Uint8Array[, zlibHeader])");
    return NULL;
  }
  if (argc > 2) napi_get_value_bool(env, argv[2], &header);
  int window = header ? 15 : -15;
  int rc;
  if (zs_window != window) {
    if (zs_window != 0) inflateEnd(&zs);
    memset(&zs, 0, sizeof zs);
    rc = inflateInit2(&zs, window);
    if (rc != Z_OK) {
      zs_window = 0;
      napi_throw_error(env, "EINFLATE", "cannot set up zlib");
      return NULL;
    }
    zs_window = window;
  } else {
    inflateReset(&zs);
  }
  zs.next_in = in;
  zs.avail_in = (uInt)inLen;
  zs.next_out = out;
  zs.avail_out = (uInt)outLen;
  rc = inflate(&zs, Z_SYNC_FLUSH);
  size_t produced = outLen - zs.avail_out;
  if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s", zs.msg ? zs.msg : (rc == Z_NEED_DICT ? "needs a preset dictionary" : "invalid deflate data"));
    napi_throw_error(env, "EINFLATE", msg);
    return NULL;
  }
  napi_value result;
  napi_create_double(env, (double)produced, &result);
  return result;
}

// alignedTo(buffers, align): whether every buffer's memory starts and ends on a multiple of `align`
// (a power of two), as O_DIRECT writes require. Anything that is not a Uint8Array: false.
static napi_value AlignedTo(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool ok = argc >= 2;
  uint32_t align = 0, count = 0;
  bool isArray = false;
  if (ok) ok = napi_get_value_uint32(env, argv[1], &align) == napi_ok && align > 0 && (align & (align - 1)) == 0;
  if (ok) ok = napi_is_array(env, argv[0], &isArray) == napi_ok && isArray && napi_get_array_length(env, argv[0], &count) == napi_ok;
  for (uint32_t i = 0; ok && i < count; i++) {
    napi_value el;
    uint8_t* data;
    size_t len;
    ok = napi_get_element(env, argv[0], i, &el) == napi_ok && bytes_of(env, el, &data, &len) && ((uintptr_t)data & (align - 1)) == 0 && (len & (align - 1)) == 0;
  }
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "fallocate", NAPI_AUTO_LENGTH, Fallocate, NULL, &fn);
  napi_set_named_property(env, exports, "fallocate", fn);
  napi_create_function(env, "inflateInto", NAPI_AUTO_LENGTH, InflateInto, NULL, &fn);
  napi_set_named_property(env, exports, "inflateInto", fn);
  napi_create_function(env, "alignedTo", NAPI_AUTO_LENGTH, AlignedTo, NULL, &fn);
  napi_set_named_property(env, exports, "alignedTo", fn);
  // The memory page size: O_DIRECT pieces are aligned to it (64 KiB on some arm64 and ppc64 kernels).
  napi_value page;
  napi_create_double(env, (double)sysconf(_SC_PAGESIZE), &page);
  napi_set_named_property(env, exports, "pageSize", page);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
