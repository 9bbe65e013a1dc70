// The receiver's TLS identity and the sender's check of it: a self-signed certificate made on the
// receiver's first start (kept in its state directory, key readable by its owner only) and pinned
// by the sender through its SHA-256 fingerprint — no CA involved, as with SSH host keys. Tokens
// are compared in constant time.
import { X509Certificate, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TlsIdentity {
  cert: string;
  key: string;
  /** SHA-256 fingerprint of the certificate, as "AB:CD:…". */
  fingerprint: string;
}

/** Loads the identity from `dir`, creating it on first use. */
export async function receiverIdentity(dir: string): Promise<TlsIdentity> {
  const certFile = join(dir, 'receiver-cert.pem');
  const keyFile = join(dir, 'receiver-key.pem');
  if (!existsSync(certFile) || !existsSync(keyFile)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // Loaded only here (first start): the certificate library takes a fifth of a second to load.
    const { generate } = await import('selfsigned');
    const made = await generate([{ name: 'commonName', value: 'ferry-receiver' }], { keySize: 2048, algorithm: 'sha256' });
    writeFileSync(keyFile, made.private, { mode: 0o600 });
    writeFileSync(certFile, made.cert, { mode: 0o644 });
  }
  const cert = readFileSync(certFile, 'utf8');
  return { cert, key: readFileSync(keyFile, 'utf8'), fingerprint: new X509Certificate(cert).fingerprint256 };
}

/** Normalises a fingerprint as users paste it (with or without colons, any case). */
export function normaliseFingerprint(fp: string): string {
  const hex = fp.replace(/^sha256:/i, '').replace(/[^0-9a-f]/gi, '').toUpperCase();
  return hex.match(/../g)?.join(':') ?? '';
}

export function newToken(): string {
  return randomBytes(24).toString('base64url');
}

export function tokensEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}
