// Test helper: two network namespaces of the test's own, joined by a veth pair with addresses in a
// private /24 chosen at random, optionally shaped with tc (tbf) in both directions; commands run
// inside with `ip netns exec`. remove() deletes both namespaces (and so the veth pair); it also
// runs at process exit.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface NetPair {
  a: string;
  b: string;
  addrA: string;
  addrB: string;
  /** The veth end inside `a` (cut it with linkDown/linkUp). */
  devA: string;
  exec(ns: string, cmd: string[]): string[];
  linkDown(): void;
  linkUp(): void;
  remove(): void;
}

const created = new Set<string>();
process.on('exit', () => {
  for (const ns of created) spawnSync('ip', ['netns', 'del', ns]);
});

export function netPair(rate?: string): NetPair {
  const tag = randomBytes(3).toString('hex');
  const a = `ferry-a-${tag}`;
  const b = `ferry-b-${tag}`;
  const net = `10.${200 + (randomBytes(1)[0]! % 50)}.${randomBytes(1)[0]! % 250}`;
  const addrA = `${net}.1`;
  const addrB = `${net}.2`;
  const devA = `fa${tag}`;
  const devB = `fb${tag}`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ip('netns', 'add', a);
  created.add(a);
  ip('netns', 'add', b);
  created.add(b);
  ip('link', 'add', devA, 'netns', a, 'type', 'veth', 'peer', 'name', devB, 'netns', b);
  ip('-n', a, 'addr', 'add', `${addrA}/24`, 'dev', devA);
  ip('-n', b, 'addr', 'add', `${addrB}/24`, 'dev', devB);
  for (const [ns, dev] of [[a, devA], [b, devB]] as const) {
    ip('-n', ns, 'link', 'set', dev, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    // The bucket holds more than one 64 KiB segment (veth sends large segments; tbf drops a packet
    // larger than its burst).
    if (rate) execFileSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '100ms']);
  }
  const exec = (ns: string, cmd: string[]) => ['ip', 'netns', 'exec', ns, ...cmd];
  return {
    a,
    b,
    addrA,
    addrB,
    devA,
    exec,
    linkDown: () => ip('-n', a, 'link', 'set', devA, 'down'),
    linkUp: () => ip('-n', a, 'link', 'set', devA, 'up'),
    remove() {
      for (const ns of [a, b]) {
        spawnSync('ip', ['netns', 'del', ns]);
        created.delete(ns);
      }
    },
  };
}
