// Errors as values: every failure Ferry reports has a stable code, a message naming the
// file/offset/field, a remedy the user can act on, and a documented process exit code.

/** Process exit codes (documented in README "Exit codes"). */
export const ExitCode = {
  OK: 0,
  FAILED: 1, // an operation failed (I/O, environment); see the error code
  CORRUPT: 2, // the image is damaged (same meaning as `qemu-img check` exit 2)
  LEAKS: 3, // only leaked clusters (same meaning as `qemu-img check` exit 3)
  UNSUPPORTED: 4, // not a supported format, or an unsupported feature of one
  UNREADABLE: 5, // the file cannot be opened or read (missing, permission, I/O error)
  REFUSED: 6, // refused by policy: a host-path reference (backing file, extent) not allowed
  TARGET: 7, // the output cannot be written: exists, no space, read-only, in use, too small
  STORAGE: 8, // object storage refused or failed: credentials, bucket, object, endpoint
  INTEGRITY: 9, // data does not match its recorded checksums, or an upload/object is incomplete
  NETWORK: 10, // online migration: the receiver cannot be reached, is not the pinned one, or refused the token
  USAGE: 64, // bad command line
  INTERRUPTED: 130, // stopped by SIGINT/SIGTERM (128 + 2)
  INTERNAL: 70, // a bug in Ferry
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** Every error code Ferry emits, with the exit code it maps to. */
export const ErrorCodes = {
  USAGE: ExitCode.USAGE,
  INTERNAL: ExitCode.INTERNAL,
  IO_ERROR: ExitCode.UNREADABLE,
  FILE_NOT_FOUND: ExitCode.UNREADABLE,
  PERMISSION_DENIED: ExitCode.UNREADABLE,
  IMAGE_UNSUPPORTED_FORMAT: ExitCode.UNSUPPORTED,
  IMAGE_UNKNOWN_FORMAT: ExitCode.UNSUPPORTED,
  IMAGE_UNSUPPORTED_FEATURE: ExitCode.UNSUPPORTED,
  IMAGE_FORMAT_MISMATCH: ExitCode.UNSUPPORTED,
  IMAGE_CORRUPT: ExitCode.CORRUPT,
  IMAGE_TRUNCATED: ExitCode.CORRUPT,
  IMAGE_BACKING_REFUSED: ExitCode.REFUSED,
  IMAGE_PATH_REFUSED: ExitCode.REFUSED,
  IMAGE_BACKING_MISSING: ExitCode.UNREADABLE,
  IMAGE_CHAIN_TOO_DEEP: ExitCode.REFUSED,
  TARGET_EXISTS: ExitCode.TARGET,
  TARGET_NOT_FOUND: ExitCode.TARGET,
  TARGET_NOT_WRITABLE: ExitCode.TARGET,
  TARGET_NO_SPACE: ExitCode.TARGET,
  TARGET_IN_USE: ExitCode.TARGET,
  TARGET_TOO_SMALL: ExitCode.TARGET,
  TARGET_LOCKED: ExitCode.TARGET,
  JOB_NOT_FOUND: ExitCode.USAGE,
  JOB_STATE: ExitCode.USAGE,
  INTERRUPTED: ExitCode.INTERRUPTED,
  AUTH_FAILED: ExitCode.STORAGE,
  ACCESS_DENIED: ExitCode.STORAGE,
  BUCKET_NOT_FOUND: ExitCode.STORAGE,
  OBJECT_NOT_FOUND: ExitCode.STORAGE,
  STORAGE_UNREACHABLE: ExitCode.STORAGE,
  STORAGE_THROTTLED: ExitCode.STORAGE,
  STORAGE_ERROR: ExitCode.STORAGE,
  STORAGE_CONFIG: ExitCode.USAGE,
  UPLOAD_INCOMPLETE: ExitCode.INTEGRITY,
  RECEIVER_UNREACHABLE: ExitCode.NETWORK,
  FINGERPRINT_MISMATCH: ExitCode.NETWORK,
  TOKEN_REJECTED: ExitCode.NETWORK,
  PROTOCOL_ERROR: ExitCode.NETWORK,
  HOOK_FAILED: ExitCode.FAILED,
  CONFIG_INVALID: ExitCode.USAGE,
  SSH_UNREACHABLE: ExitCode.NETWORK,
  SSH_HOST_KEY: ExitCode.NETWORK,
  SSH_AUTH_FAILED: ExitCode.NETWORK,
  AGENT_NOT_BUILT: ExitCode.FAILED,
  AGENT_FAILED: ExitCode.FAILED,
  FLEET_INCOMPLETE: ExitCode.FAILED,
  CHECKSUM_MISMATCH: ExitCode.INTEGRITY,
  DATABASE_UNREACHABLE: ExitCode.FAILED,
  DATABASE_AUTH_FAILED: ExitCode.FAILED,
  DATABASE_ERROR: ExitCode.FAILED,
} as const;
export type ErrorCode = keyof typeof ErrorCodes;

export interface FerryErrorOptions {
  remedy: string;
  /** Structured facts for --json output (offsets, fields, expected/actual sizes…). */
  details?: Record<string, unknown>;
  cause?: unknown;
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly remedy: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: FerryErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FerryError';
    this.code = code;
    this.remedy = options.remedy;
    this.details = options.details;
  }

  get exitCode(): ExitCodeValue {
    return ErrorCodes[this.code];
  }

  toJSON(): { code: ErrorCode; message: string; remedy: string; details?: Record<string, unknown> } {
    return {
      code: this.code,
      message: this.message,
      remedy: this.remedy,
      ...(this.details ? { details: this.details } : {}),
    };
  }
}

/** A failure as job records keep it: a FerryError's code, message and remedy; anything else is INTERNAL. */
export function errorRecord(err: unknown): { code: string; message: string; remedy: string } {
  return err instanceof FerryError
    ? { code: err.code, message: err.message, remedy: err.remedy }
    : { code: 'INTERNAL', message: (err as Error)?.message ?? String(err), remedy: 'Please report this bug.' };
}

/** A structural problem in an image: thrown while reading, collected while checking. */
export function corrupt(message: string, details?: Record<string, unknown>): FerryError {
  return new FerryError('IMAGE_CORRUPT', message, {
    remedy:
      'The image is damaged. Run `ferry image check --deep` for the full list of problems; ' +
      're-export or re-download it from its origin and compare its checksum with the original.',
    details,
  });
}

/** The file is shorter than the structures inside it say it must be. */
export function truncated(what: string, expected: number, actual: number, details?: Record<string, unknown>): FerryError {
  return new FerryError(
    'IMAGE_TRUNCATED',
    `${what}: the file is truncated: it needs at least ${expected} bytes but has ${actual}`,
    {
      remedy:
        'The file is incomplete (an interrupted copy, download or upload). Copy it again from its ' +
        'origin and compare sizes and checksums with the original.',
      details: { expectedSize: expected, actualSize: actual, ...details },
    },
  );
}

export function unsupportedFeature(message: string, remedy: string, details?: Record<string, unknown>): FerryError {
  return new FerryError('IMAGE_UNSUPPORTED_FEATURE', message, { remedy, details });
}

/** Translates a Node.js system error (ENOENT, EACCES, EIO…) on `path` into a FerryError. */
export function fromSystemError(err: unknown, path: string): FerryError {
  if (err instanceof FerryError) return err;
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return new FerryError('FILE_NOT_FOUND', `${path}: no such file or directory`, {
        remedy: 'Check the path (relative paths are resolved against the current directory).',
        cause: err,
      });
    case 'EACCES':
    case 'EPERM':
      return new FerryError('PERMISSION_DENIED', `${path}: permission denied`, {
        remedy: 'Run Ferry as a user that may read this file (block devices usually need root), or fix its permissions.',
        cause: err,
      });
    case 'EISDIR':
      return new FerryError('IO_ERROR', `${path}: is a directory, not an image file`, {
        remedy: 'Give the path of the image file itself.',
        cause: err,
      });
    default:
      return new FerryError('IO_ERROR', `${path}: ${e?.message ?? String(err)}`, {
        remedy: 'Check the device or file system holding the file (dmesg, free space, permissions).',
        cause: err,
      });
  }
}
