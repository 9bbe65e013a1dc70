// The web console of `ferry server`: one self-contained page (no external assets) over the REST
// API. The token comes from the link the server prints (#token=…) or is asked for once and kept
// in the browser's localStorage. Lists every job (state, progress, rate, ETA, failure code,
// message and remedy), refreshes every 2 s; selecting a job shows its rate-over-time chart, its
// details and, for imports, Retry / Cancel.
export function consolePage(): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ferry</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;color:#1c2430;background:#f5f7fa}
header{background:#16324f;color:#fff;padding:10px 18px;font-size:18px}
main{padding:14px 18px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 8px;border-bottom:1px solid #e1e6ee;text-align:left;vertical-align:top}
tr.job{cursor:pointer} tr.job:hover{background:#eef3fa} tr.sel{background:#dde8f6}
.bar{width:120px;height:10px;background:#e1e6ee;border-radius:5px;overflow:hidden;display:inline-block;vertical-align:middle}
.bar i{display:block;height:100%;background:#2f7bd9}
.state-failed{color:#b3261e;font-weight:600} .state-succeeded{color:#1e7d32;font-weight:600}
.error{color:#b3261e} .remedy{color:#5a4500;background:#fff6d6;padding:6px 8px;margin-top:4px;border-radius:4px}
#detail{margin-top:16px;background:#fff;padding:12px;border:1px solid #e1e6ee;display:none}
button{margin-right:8px} #msg{color:#b3261e}
</style></head>
<body><header>Ferry — migrations and imports</header><main>
<div id="msg"></div>
<table><thead><tr><th>job</th><th>kind</th><th>state</th><th>progress</th><th>rate</th><th>ETA</th><th>source → target</th><th>failure</th></tr></thead>
<tbody id="jobs"><tr><td colspan="8">loading…</td></tr></tbody></table>
<section id="detail"><h3 id="d-title"></h3><canvas id="chart" width="640" height="160" aria-label="rate over time"></canvas>
<div id="d-body"></div><div id="d-actions"></div></section>
</main>
<script>
const frag = new URLSearchParams(location.hash.slice(1));
if (frag.get('token')) { localStorage.setItem('ferryToken', frag.get('token')); history.replaceState(null, '', location.pathname); }
let token = localStorage.getItem('ferryToken') || '';
let selected = null;
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const bytes = (n) => { if (n == null) return ''; const u = ['B','KiB','MiB','GiB','TiB']; let i = 0; while (n >= 1024 && i < 4) { n /= 1024; i++; } return n.toFixed(i ? 1 : 0) + ' ' + u[i]; };
async function api(path, method = 'GET') {
  const r = await fetch(path, { method, headers: { authorization: 'Bearer ' + token } });
  if (r.status === 401) { token = prompt('Ferry server token (printed when the server started):') || ''; localStorage.setItem('ferryToken', token); throw new Error('unauthorized'); }
  const doc = await r.json();
  if (!r.ok) throw new Error(doc.error ? doc.error.code + ': ' + doc.error.message : 'HTTP ' + r.status);
  return doc;
}
function row(j) {
  const err = j.error ? '<div class="error">' + esc(j.error.code) + ': ' + esc(j.error.message) + '</div>' + (j.error.remedy ? '<div class="remedy">' + esc(j.error.remedy) + '</div>' : '') : '';
  const running = !j.finished;
  return '<tr class="job' + (selected === j.id ? ' sel' : '') + '" data-id="' + esc(j.id) + '"><td>' + esc(j.id.slice(0, 40)) + '</td><td>' + esc(j.kind) + '</td><td class="state-' + esc(j.state) + '">' + esc(j.state) + (j.phase && running ? ' (' + esc(j.phase) + ')' : '') + (j.stale ? ' <span class="error">no report since ' + esc(j.reportedAt || '') + '</span>' : '') + '</td>' +
    '<td><span class="bar"><i style="width:' + Math.min(100, j.percent) + '%"></i></span> ' + j.percent + '%</td><td>' + (j.rate && running ? bytes(j.rate) + '/s' : '') + '</td><td>' + (j.eta != null && running ? Math.round(j.eta) + ' s' : '') + '</td>' +
    '<td>' + esc(j.source) + ' → ' + esc(j.target) + (j.worker ? '<div class="remedy">worker ' + esc(j.worker) + '</div>' : '') + (j.host ? '<div class="remedy">on ' + esc(j.host) + ' (reported)</div>' : '') + '</td><td>' + err + '</td></tr>';
}
function chart(rates) {
  const c = document.getElementById('chart'), g = c.getContext('2d');
  c.dataset.samples = String(rates.length);
  g.clearRect(0, 0, c.width, c.height); g.strokeStyle = '#c8d0dc'; g.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
  if (!rates.length) { g.fillStyle = '#6b7785'; g.fillText('no rate samples yet (taken every 2 s while the job runs)', 10, 20); return; }
  const max = Math.max(...rates.map((r) => r.bytesPerSecond), 1);
  g.strokeStyle = '#2f7bd9'; g.lineWidth = 2; g.beginPath();
  rates.forEach((r, i) => { const x = 5 + (i / Math.max(1, rates.length - 1)) * (c.width - 10), y = c.height - 5 - (r.bytesPerSecond / max) * (c.height - 25); i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke(); g.fillStyle = '#1c2430'; g.fillText('peak ' + bytes(max) + '/s', 8, 14);
}
async function showDetail(id) {
  const d = await api('/api/jobs/' + encodeURIComponent(id)); const r = await api('/api/jobs/' + encodeURIComponent(id) + '/rates');
  const j = d.job; const box = document.getElementById('detail'); box.style.display = 'block';
  document.getElementById('d-title').textContent = j.kind + ' ' + j.id;
  chart(r.rates);
  document.getElementById('d-body').innerHTML = '<p>' + esc(j.state) + ', ' + bytes(j.bytesDone) + ' of ' + bytes(j.bytesTotal) + '; started ' + esc(j.started || '') + (j.finished ? ', finished ' + esc(j.finished) : '') + '</p>' +
    (j.error ? '<p class="error">' + esc(j.error.code) + ': ' + esc(j.error.message) + '</p><div class="remedy">Remedy: ' + esc(j.error.remedy || '') + '</div>' : '') +
    (d.events ? '<ul>' + d.events.slice(-8).map((e) => '<li>' + esc(e.at) + ' ' + esc(e.message || e.state) + '</li>').join('') + '</ul>' : '');
  const acts = document.getElementById('d-actions'); acts.innerHTML = '';
  if (j.kind === 'import' && !['succeeded', 'cancelled'].includes(j.state)) {
    for (const a of ['retry', 'cancel']) { const b = document.createElement('button'); b.textContent = a[0].toUpperCase() + a.slice(1); b.onclick = () => api('/api/jobs/' + encodeURIComponent(j.id) + '/' + a, 'POST').then(refresh, (e) => msg(e.message)); acts.appendChild(b); }
  }
}
function msg(t) { document.getElementById('msg').textContent = t || ''; }
async function refresh() {
  try {
    const doc = await api('/api/jobs'); msg('');
    const rows = doc.jobs.map(row).join('');
    document.getElementById('jobs').innerHTML = rows || '<tr><td colspan="8">no jobs yet</td></tr>';
    for (const tr of document.querySelectorAll('tr.job')) tr.onclick = () => { selected = tr.dataset.id; showDetail(selected).catch((e) => msg(e.message)); refresh(); };
    if (selected) await showDetail(selected);
  } catch (e) { msg(e.message); }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
`;
}
