// Loading a YAML file checked against a zod schema, every problem reported at once with its
// line:column (the migration config, the fleet inventory).
import { readFileSync } from 'node:fs';
import { LineCounter, isMap, isNode, isScalar, parseDocument } from 'yaml';
import type { z } from 'zod';
import { FerryError } from './errors.js';

function invalid(file: string, problems: string[], remedy: string): FerryError {
  return new FerryError('CONFIG_INVALID', `${file}: ${problems.length} problem(s):\n  ${problems.slice(0, 20).join('\n  ')}`, { remedy, details: { problems } });
}

/**
 * Reads `file` and checks it against `schema`. `what`: the kind of file (for messages), the remedy
 * for a missing file and the one for a file with problems.
 */
export function loadYaml<S extends z.ZodType>(file: string, schema: S, what: { kind: string; missing: string; remedy: string }): z.infer<S> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FerryError('FILE_NOT_FOUND', `${file}: cannot read the ${what.kind} (${(err as NodeJS.ErrnoException).code})`, { remedy: what.missing });
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  const where = (offset: number | undefined) => {
    if (offset === undefined) return `${file}`;
    const p = lines.linePos(offset);
    return `${file}:${p.line}:${p.col}`;
  };
  if (doc.errors.length) throw invalid(file, doc.errors.map((e) => `${where(e.pos[0])}: ${e.message.split('\n')[0]}`), what.remedy);
  const parsed = schema.safeParse(doc.toJS());
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      // The deepest node of the path that exists gives the position.
      let node: unknown;
      for (let n = issue.path.length; n >= 0 && !isNode(node); n--) node = doc.getIn(issue.path.slice(0, n) as (string | number)[], true);
      let range = isNode(node) ? node.range : undefined;
      // An unknown key: point at the key itself.
      if (issue.code === 'unrecognized_keys' && isMap(node)) {
        const pair = node.items.find((it) => isScalar(it.key) && issue.keys.includes(String(it.key.value)));
        if (pair && isScalar(pair.key) && pair.key.range) range = pair.key.range;
      }
      const key = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
      return `${where(range?.[0])}: ${key}: ${issue.message}`;
    });
    throw invalid(file, problems, what.remedy);
  }
  return parsed.data;
}
