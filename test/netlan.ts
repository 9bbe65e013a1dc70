// Test helper: a small LAN of network namespaces of the test's own — one namespace holding a
// bridge (with an address of its own, for a controller run there) and one namespace per host, each
// joined to the bridge by a veth pair, addresses in a private /24 chosen at random. remove()
// deletes every namespace (and so the links); it also runs at process exit.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface Lan {
  /** The bridge's namespace, where a controller can run; its address is `hubAddr`. */
  hub: string;
  hubAddr: string;
  /** Each host's namespace, address, and its link's end in the hub (shape it with tc there). */
  hosts: { ns: string; addr: string; hubDev: string }[];
  /** argv that runs `cmd` inside namespace `ns`. */
  exec(ns: string, cmd: string[]): string[];
  remove(): void;
}

const created = new Set<string>();
process.on('exit', () => {
  for (const ns of created) spawnSync('ip', ['netns', 'del', ns]);
});

export function lan(count: number): Lan {
  const tag = randomBytes(3).toString('hex');
  const net = `10.${200 + (randomBytes(1)[0]! % 50)}.${randomBytes(1)[0]! % 250}`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const hub = `ferry-hub-${tag}`;
  const all: string[] = [];
  const remove = () => {
    for (const ns of all) {
      spawnSync('ip', ['netns', 'del', ns]);
      created.delete(ns);
    }
  };
  try {
    ip('netns', 'add', hub);
    created.add(hub);
    all.push(hub);
    ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', hub, 'addr', 'add', `${net}.254/24`, 'dev', 'br0');
    ip('-n', hub, 'link', 'set', 'br0', 'up');
    ip('-n', hub, 'link', 'set', 'lo', 'up');
    const hosts: { ns: string; addr: string; hubDev: string }[] = [];
    for (let i = 0; i < count; i++) {
      const ns = `ferry-h${i}-${tag}`;
      ip('netns', 'add', ns);
      created.add(ns);
      all.push(ns);
      const addr = `${net}.${i + 1}`;
      ip('-n', hub, 'link', 'add', `v${i}${tag}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      ip('-n', hub, 'link', 'set', `v${i}${tag}`, 'master', 'br0', 'up');
      ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
      ip('-n', ns, 'link', 'set', 'eth0', 'up');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      hosts.push({ ns, addr, hubDev: `v${i}${tag}` });
    }
    return { hub, hubAddr: `${net}.254`, hosts, exec: (ns, cmd) => ['ip', 'netns', 'exec', ns, ...cmd], remove };
  } catch (err) {
    remove();
    throw err;
  }
}
