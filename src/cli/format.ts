// Human-readable rendering helpers for the CLI: byte sizes, tables, offsets.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 4294967296 → "4 GiB"; 1610612736 → "1.5 GiB". */
export function humanBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 ? String(v) : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  return `${text.replace(/\.0+$|(\.\d*?)0+$/, '$1')} ${UNITS[u]}`;
}

/** "4 GiB (4294967296 bytes)". */
export function sizeWithBytes(n: number): string {
  return n < 1024 ? `${n} bytes` : `${humanBytes(n)} (${n} bytes)`;
}

export function hex(n: number): string {
  return '0x' + n.toString(16);
}

/** Renders rows as an aligned text table with a header line. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/** Parses "4G", "512M", "64k", "1.5GiB", "1000" into bytes (binary units). */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const power = ' kmgtpe'.indexOf((m[2] || ' ').toLowerCase());
  const value = Math.round(Number(m[1]) * 1024 ** power);
  return Number.isSafeInteger(value) ? value : undefined;
}
