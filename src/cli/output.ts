// How the CLI talks: one JSON document on stdout with --json, readable text otherwise, and errors
// as {"error": {code, message, remedy}} or "error [CODE]: message / remedy" — never a stack trace
// (FERRY_DEBUG=1 adds it on stderr for bug reports).
import { FerryError } from '../errors.js';

export interface Output {
  json: boolean;
  /** Prints the command's result document (JSON) or text. */
  result(doc: unknown, text: () => string): void;
  /** Prints a note on stderr (suppressed in JSON mode). */
  note(text: string): void;
}

export function makeOutput(json: boolean): Output {
  return {
    json,
    result(doc, text) {
      process.stdout.write(json ? JSON.stringify(doc, null, 2) + '\n' : text() + '\n');
    },
    note(text) {
      if (!json) process.stderr.write(text + '\n');
    },
  };
}

export const BUG_URL = 'https://github.com/ferry-migrate/ferry/issues';

/** Turns anything thrown into a FerryError; unknown exceptions become INTERNAL. */
export function asFerryError(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FerryError('INTERNAL', `internal error: ${message}`, {
    remedy: `This is a bug in Ferry. Please report it (${BUG_URL}) with the command you ran and the output of FERRY_DEBUG=1 ferry …`,
    cause: err,
  });
}

export function printError(err: FerryError, json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify({ error: err.toJSON() }, null, 2) + '\n');
  } else {
    process.stderr.write(`ferry: error [${err.code}]: ${err.message}\n  remedy: ${err.remedy}\n`);
  }
  if (process.env.FERRY_DEBUG) {
    const cause = err.cause instanceof Error ? err.cause : err;
    process.stderr.write(`${cause.stack ?? String(cause)}\n`);
  }
}
