// journeyd operator page: journeys list, journey canvas with live counts, customer story.
// Plain ES2020, no dependencies. Every server string reaches the page through textContent or
// setAttribute (never innerHTML), because customer data is untrusted.
'use strict';

const TOKEN_KEY = 'journeyd.token';
const POLL_MS = 3000;
const SVG_NS = 'http://www.w3.org/2000/svg';
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- small helpers

/** Appends children (nodes, strings, arrays; null/false skipped) to a node. */
function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** Builds an element; attrs: `class`, `text`, `on<event>` handlers, other attributes. */
function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  return append(node, children);
}
const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG_NS, tag), attrs, kids);

const num = (n) => Number(n || 0).toLocaleString('en-US');
const total = (obj) => Object.values(obj || {}).reduce((a, b) => a + Number(b || 0), 0);
/** {"email": 80, "sms": 10} -> "email 80 · sms 10" ("—" when empty). */
const breakdown = (obj) =>
  Object.entries(obj || {}).map(([k, v]) => `${k}\u00a0${num(v)}`).join(' · ') || '—';
/** RFC 3339 -> "2026-12-08 10:00:00 UTC" (kept in UTC, as journeyd logs are). */
function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}
const timeEl = (iso) => h('time', { datetime: iso || null, text: when(iso) });

function badge(status, id) {
  return h('span', { class: `badge status-${status || 'unknown'}`, id, text: status || 'unknown' });
}

// ---------------------------------------------------------------- API, errors, polling

let token = sessionStorage.getItem(TOKEN_KEY);
let generation = 0; // bumped on every route change; stale polls stop themselves
let pollTimer = null;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls the operator API with the bearer token; throws ApiError (status 0 = no answer). */
async function api(path, method = 'GET') {
  let res, text;
  try {
    res = await fetch(path, { method, cache: 'no-store', headers: { Authorization: `Bearer ${token}` } });
    text = await res.text();
  } catch (e) {
    throw new ApiError(0, `journeyd is not answering: ${e.message}`);
  }
  showDown(null); // it answered
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (res.status === 401) {
    signOut('The token was not accepted.');
    throw new ApiError(401, 'The token was not accepted.');
  }
  if (!res.ok) {
    const msg = body && typeof body.error === 'string' ? body.error : `HTTP ${res.status} ${res.statusText}`;
    throw new ApiError(res.status, msg);
  }
  return body;
}

// The two banners: "not answering" (cleared by the next answer) and errors (until dismissed).
function showDown(message) { $('down-banner').hidden = !message; $('down-banner').textContent = message || ''; }
function showError(message) { $('error-banner').hidden = !message; $('error-text').textContent = message || ''; }
/** Shows an error where it belongs: 401 is handled by api(), no answer in the down banner. */
function report(e) {
  if (e instanceof ApiError && e.status === 401) return;
  if (e instanceof ApiError && e.status === 0) showDown(e.message);
  else showError(e.message || String(e));
}

/** Runs `fn` now and then every POLL_MS until the route changes; errors do not stop it. */
function poll(fn) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    try { await fn(); } catch (e) { if (mine === generation) report(e); }
    if (mine === generation) pollTimer = setTimeout(tick, POLL_MS);
  };
  tick();
}

// ---------------------------------------------------------------- sign-in and routing

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  generation++;
  clearTimeout(pollTimer);
  showSignIn(message);
}

function showSignIn(message) {
  for (const id of ['nav', 'customer-search', 'sign-out']) $(id).hidden = true;
  $('view').replaceChildren();
  showError(null);
  showDown(null);
  $('signin').hidden = false;
  $('signin-message').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

/** Renders the page for the current hash: #/, #/journey/<id>, #/customer/<id>. */
function route() {
  generation++;
  clearTimeout(pollTimer);
  showError(null);
  if (!token) return showSignIn('');
  $('signin').hidden = true;
  for (const id of ['nav', 'customer-search', 'sign-out']) $(id).hidden = false;
  const hash = location.hash.replace(/^#/, '') || '/';
  const m = hash.match(/^\/(journey|customer)\/(.+)$/);
  let id = m ? m[2] : null;
  try { if (id) id = decodeURIComponent(id); } catch (_) { /* keep it raw */ }
  if (m && m[1] === 'journey') journeyPage(id);
  else if (m && m[1] === 'customer') customerPage(id);
  else journeysPage();
}

// ---------------------------------------------------------------- journeys list (#/)

function journeysPage() {
  document.title = 'Journeys · journeyd';
  const body = h('tbody', { id: 'journeys-body' });
  const cols = ['Journey', 'Status', 'Versions', 'Entered', 'Active', 'Goals', 'Entered today', 'Goals today', 'Sends', 'Suppressed'];
  $('view').replaceChildren(
    h('div', { class: 'page-head' }, h('h1', { text: 'Journeys' }),
      h('p', { class: 'muted', text: 'Counts are live for the whole deployment and refresh every 3 seconds; today is the UTC day of journeyd\'s clock.' })),
    h('div', { class: 'card table-card' },
      h('table', { class: 'data journeys', id: 'journeys' },
        h('thead', {}, h('tr', {}, cols.map((c, i) => h('th', { scope: 'col', class: i > 2 && i < 8 ? 'n' : null, text: c })))),
        body)));
  poll(async () => {
    const data = await api('/journeys');
    const rows = (data.journeys || []).map((j) => {
      const c = j.counts || {};
      const others = (j.versions || []).filter((v) => v !== j.version);
      return h('tr', { 'data-journey': j.id },
        h('td', {},
          h('a', { href: `#/journey/${encodeURIComponent(j.id)}`, class: 'jname', text: j.name || j.id }),
          h('div', { class: 'muted small mono', text: j.id })),
        h('td', {}, badge(j.status), j.status_since ? h('div', { class: 'muted small' }, 'since ', timeEl(j.status_since)) : null),
        h('td', {}, `v${j.version}`, others.length ? h('span', { class: 'muted', text: ` (also ${others.map((v) => `v${v}`).join(', ')})` }) : null),
        h('td', { class: 'n', text: num(c.entered) }),
        h('td', { class: 'n', text: num(c.active) }),
        h('td', { class: 'n', text: num(c.goal_reached) }),
        h('td', { class: 'n today-entered', text: num(c.entered_today) }),
        h('td', { class: 'n today-goals', text: num(c.goals_today) }),
        h('td', { text: breakdown(c.sent) }),
        h('td', { text: breakdown(c.suppressed) }));
    });
    if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: cols.length, class: 'muted', text: 'No journey is loaded.' })));
    body.replaceChildren(...rows);
  });
}

// ---------------------------------------------------------------- one journey (#/journey/<id>)

const ACTIONS = {
  pause: ['Pause', 'No customer enters; customers already in it go on but stop at their next send, held until you resume.'],
  resume: ['Resume', 'Customers enter again and held sends go out.'],
  drain: ['Drain', 'No customer enters any more; customers already in it go on to the end.'],
  stop: ['Stop', 'No customer enters, every customer in it leaves now and every outstanding send is cancelled; this cannot be undone.'],
};

function journeyPage(id) {
  document.title = `${id} · journeyd`;
  const enc = encodeURIComponent(id);
  const stat = (key, label) => h('div', { class: 'stat' }, h('span', { class: 'stat-n', id: `stat-${key}`, text: '…' }), h('span', { class: 'stat-l', text: label }));
  const notice = h('p', { id: 'action-notice', class: 'notice', role: 'status', hidden: true });
  const buttons = Object.entries(ACTIONS).map(([action, [verb, what]]) =>
    h('button', {
      type: 'button', id: `btn-${action}`, class: action === 'stop' ? 'danger' : 'secondary',
      onclick: () => operate(id, action, verb, what, notice),
    }, verb));
  const graphBox = h('div', { class: 'graph', id: 'graph' }, h('p', { class: 'muted', text: 'Loading the journey…' }));
  const experiments = h('div', { id: 'experiments' });
  $('view').replaceChildren(
    h('div', { class: 'page-head journey-head' },
      h('div', {},
        h('h1', {}, h('span', { id: 'journey-name', text: id }), ' ', badge('unknown', 'journey-status'),
          h('span', { id: 'journey-since', class: 'muted small' })),
        h('p', { class: 'muted' }, h('span', { class: 'mono', text: id }), ' · ', h('span', { id: 'journey-version', text: '' })),
        h('p', { id: 'journey-scope', class: 'scope' })),
      h('div', { class: 'stats' }, stat('entered', 'entered'), stat('active', 'active'), stat('goals', 'goals'))),
    h('div', { class: 'controls' }, buttons, notice),
    h('section', { class: 'card' }, graphBox),
    h('section', { class: 'card' }, h('h2', { text: 'Experiments' }), experiments));

  let graph = null;
  poll(async () => {
    // The graph is drawn on the first successful poll, and again when a reload brings a new
    // version; the other polls only update numbers.
    const [g, rep, list] = await Promise.all([graph || api(`/journeys/${enc}/graph`), api(`/journeys/${enc}/counts`), api('/journeys')])
      .catch((e) => { // an unknown journey (404) or the like: say so in place too
        if (!graph && e.status >= 400 && e.status !== 401) graphBox.replaceChildren(h('p', { class: 'error-text', text: e.message }));
        throw e;
      });
    if (!graph) {
      graph = g;
      $('journey-name').textContent = g.name || g.id;
      $('journey-version').textContent = `version ${g.version}`;
      graphBox.replaceChildren(drawGraph(g));
      if ((g.notes || []).length) graphBox.append(h('ul', { class: 'notes' }, g.notes.map((n) => h('li', { text: n }))));
    }
    const listed = ((list && list.journeys) || []).find((x) => x.id === id);
    if (graph && listed && listed.version !== graph.version) {
      graph = null; // redrawn on the next poll, from the new version's graph
      return;
    }
    updateCounts(graphBox, rep);
    $('stat-entered').textContent = num(rep.entered);
    $('stat-active').textContent = num(rep.active);
    $('stat-goals').textContent = num(rep.goal_reached);
    $('journey-scope').textContent = rep.scope ? `Counts: ${rep.scope}.` : '';
    renderExperiments(experiments, graph, rep);
    setStatus(id, list);
  });
}

/** Sets the journey page's status badge from a GET /journeys answer. */
function setStatus(id, list) {
  const j = ((list && list.journeys) || []).find((x) => x.id === id);
  const el = $('journey-status');
  if (!el) return;
  const status = j ? j.status : 'unknown';
  el.className = `badge status-${status}`;
  el.textContent = status;
  $('journey-since').replaceChildren(j && j.status_since ? h('span', {}, ' since ', timeEl(j.status_since)) : '');
}

/** Pause/resume/drain/stop: confirm, POST, show the outcome in place, refresh the status. */
async function operate(id, action, verb, what, notice) {
  if (!window.confirm(`${verb} the journey ${id}? ${what}`)) return;
  notice.hidden = false;
  notice.className = 'notice';
  notice.textContent = `${verb}: sending…`;
  try {
    await api(`/journeys/${encodeURIComponent(id)}/${action}`, 'POST');
    notice.textContent = `${verb} recorded; every replica applies it within a second.`;
    setStatus(id, await api('/journeys'));
  } catch (e) {
    if (e.status === 401) return;
    notice.className = 'notice notice-error';
    notice.textContent = e.status === 0 ? e.message : `${verb} refused: ${e.message}`;
    if (e.status === 0) showDown(e.message);
  }
}

// ---------------------------------------------------------------- live counts on the canvas

function updateCounts(root, rep) {
  for (const g of root.querySelectorAll('g[data-node]')) {
    const id = g.getAttribute('data-node');
    const title = g.querySelector('title');
    const label = g.getAttribute('data-label'); // the node's label, kept at the top of the tooltip
    const line1 = g.querySelector('text.counts');
    if (g.getAttribute('data-kind') === 'entry' && line1) {
      line1.textContent = `entered ${num(rep.entered)}`;
      title.textContent = `${label}\n\nentered ${num(rep.entered)}, active ${num(rep.active)}, goals ${num(rep.goal_reached)}`;
      continue;
    }
    if (!g.hasAttribute('data-step')) continue;
    const st = (rep.steps || {})[id] || {};
    const reached = Number(st.reached || 0), waiting = Number(st.waiting || 0);
    const sent = total(st.sent), suppressed = total(st.suppressed);
    Object.entries({ reached, waiting, sent, suppressed }).forEach(([k, n]) => g.setAttribute(`data-${k}`, n));
    line1.textContent = `reached ${num(reached)} · waiting ${num(waiting)}`;
    const line2 = g.querySelector('text.counts-more');
    line2.replaceChildren(); // then only the non-zero parts
    append(line2, [sent ? s('tspan', { class: 'c-sent', text: `sent ${num(sent)}` }) : null, sent && suppressed ? ' · ' : null,
      suppressed ? s('tspan', { class: 'c-supp', text: `suppressed ${num(suppressed)}` }) : null]);
    title.textContent = [label, '', `reached ${num(reached)}, waiting ${num(waiting)}`,
      sent ? `sent: ${breakdown(st.sent)}` : 'sent: none',
      suppressed ? `suppressed: ${breakdown(st.suppressed)}` : 'suppressed: none'].join('\n');
  }
}

// ---------------------------------------------------------------- experiments

const pct1 = (x) => `${(x * 100).toFixed(1)}%`;
const rateOf = (a) => (a.rate !== null && a.rate !== undefined ? a.rate : (a.entered ? a.converted / a.entered : 0));
const armName = (a) => a.next || 'end';
function pValue(p) {
  if (p < 0.001) return '< 0.001';
  if (p < 0.01) return p.toFixed(3);
  const two = p.toFixed(2);
  return p < 0.05 && two === '0.05' ? p.toFixed(3) : two; // never round a significant p to 0.05
}

/** The verdict in plain words for the best non-control arm by rate. */
function verdict(arms) {
  if (!arms.length || total(arms.map((a) => a.entered)) === 0) return 'No customer has reached this split yet.';
  if (!arms.some((a) => a.control)) return 'No control arm: rates only.';
  const others = arms.filter((a) => !a.control);
  if (!others.length) return 'Only the control arm has customers: nothing to compare yet.';
  const best = others.reduce((a, b) => (rateOf(b) > rateOf(a) ? b : a));
  const name = armName(best);
  if (best.lift === null || best.lift === undefined) {
    return `${name} converts at ${pct1(rateOf(best))}; the control has no conversion rate to compare with yet.`;
  }
  const size = Math.round(Math.abs(best.lift) * 100);
  const cmp = size === 0 ? 'converts as well as the control'
    : `converts ${size}% ${best.lift > 0 ? 'better' : 'worse'} than the control`;
  const p = best.p_value;
  if (p === null || p === undefined) return `${name} ${cmp} so far: no p-value yet`;
  if (p < 0.05) return `${name} ${cmp}, p = ${pValue(p)}: significant at the 5% level`;
  return `${name} ${cmp} so far, p = ${pValue(p)}: not significant yet`;
}

function renderExperiments(box, graph, rep) {
  const splits = rep.splits || {};
  const ids = graph.nodes.filter((n) => n.kind === 'split').map((n) => n.id);
  for (const k of Object.keys(splits)) if (!ids.includes(k)) ids.push(k);
  if (!ids.length) {
    box.replaceChildren(h('p', { class: 'muted', text: 'This journey has no experiment (no split step).' }));
    return;
  }
  box.replaceChildren(...ids.map((id) => {
    const arms = (splits[id] && splits[id].arms) || [];
    const cols = ['Arm', 'Entered', 'Converted', 'Rate', 'Lift', 'p-value'];
    const rows = arms.map((a) => h('tr', { class: a.control ? 'control' : null, 'data-arm': armName(a) },
      h('td', {}, h('span', { class: 'mono', text: armName(a) }), a.control ? h('span', { class: 'muted', text: ' (control)' }) : null),
      h('td', { class: 'n', text: num(a.entered) }),
      h('td', { class: 'n', text: num(a.converted) }),
      h('td', { class: 'n', text: a.entered ? pct1(rateOf(a)) : '—' }),
      h('td', { class: 'n', text: a.lift === null || a.lift === undefined ? '—' : `${a.lift >= 0 ? '+' : '−'}${Math.round(Math.abs(a.lift) * 100)}%` }),
      h('td', { class: 'n', text: a.p_value === null || a.p_value === undefined ? '—' : pValue(a.p_value) })));
    return h('div', { class: 'experiment', 'data-split': id },
      h('h3', {}, 'Split ', h('span', { class: 'mono', text: id })),
      rows.length ? h('table', { class: 'data arms' },
        h('thead', {}, h('tr', {}, cols.map((c, i) => h('th', { scope: 'col', class: i ? 'n' : null, text: c })))),
        h('tbody', {}, rows)) : null,
      h('p', { class: 'verdict', text: verdict(arms) }));
  }));
}

// ---------------------------------------------------------------- graph layout and drawing

// Shape and colour family of each node kind (colours live in style.css).
const FAMILY = {
  entry: 'entry', exit: 'exit', finish: 'finish', send: 'send', update: 'update',
  wait: 'wait', wait_until: 'wait', wait_date: 'wait', wait_for: 'waitfor',
  branch: 'choice', decide: 'choice', split: 'split',
};
const GAP_X = 28;   // between neighbours in a rank
const GAP_Y = 18;   // above and below every rank
const LINE = 16;    // label line height
const SKEW = 9;     // parallelogram slant

const measureCtx = document.createElement('canvas').getContext('2d');
function textWidth(text, size, weight = 400) {
  measureCtx.font = `${weight} ${size}px ${FONT}`;
  return measureCtx.measureText(text).width;
}
/** Breaks a long label line at spaces, at most `max` characters a line. */
function wrap(line, max) {
  const out = [];
  let cur = '';
  for (const word of line.split(' ')) {
    if (cur && (cur + ' ' + word).length > max) { out.push(cur); cur = word; } else cur = cur ? `${cur} ${word}` : word;
  }
  out.push(cur);
  return out;
}

/**
 * Lays a graph out in ranks: node ranks (even) alternate with edge-label ranks (odd).
 * Returns {verts, ranks, edges, back} with x, y, w, h on every vertex.
 */
function layout(graph) {
  const verts = new Map();
  for (const n of graph.nodes) {
    const fam = FAMILY[n.kind] || 'send';
    const lines = String(n.label || n.id).split('\n').flatMap((l) => wrap(l, 44));
    const isStep = !['entry', 'finish'].includes(n.kind);
    const countLines = n.kind === 'entry' ? 1 : isStep ? 2 : 0;
    let w = Math.max(...lines.map((l, i) => textWidth(l, i ? 12 : 13, i ? 400 : 600)));
    if (isStep) w = Math.max(w, textWidth('reached 88,888 · waiting 8,888', 11.5), textWidth('sent 88,888 · suppressed 8,888', 11.5));
    w += fam === 'wait' || fam === 'waitfor' ? 64 : fam === 'choice' || fam === 'split' ? 56 : 32;
    const hgt = 18 + lines.length * LINE + countLines * 15;
    const v = fam === 'finish' ? { w: 52, h: 52 } : { w: Math.ceil(w), h: hgt };
    verts.set(n.id, Object.assign(v, { id: n.id, node: n, fam, lines, countLines, isStep, up: [], down: [] }));
  }
  const edges = graph.edges.filter((e) => verts.has(e.from) && verts.has(e.to)).map((e) => ({ ...e }));
  const out = new Map([...verts.keys()].map((k) => [k, edges.filter((e) => e.from === k)]));

  // 1. Depth-first search from the entry: an edge to a node still on the stack is a back edge.
  const state = new Map();
  let seen = 0;
  const visit = (id) => {
    state.set(id, 1);
    verts.get(id).dfs = seen++;
    for (const e of out.get(id)) {
      if (state.get(e.to) === 1) e.back = true;
      else if (!state.has(e.to)) visit(e.to);
    }
    state.set(id, 2);
  };
  const entry = graph.nodes.find((n) => n.kind === 'entry');
  if (entry) visit(entry.id);
  for (const id of verts.keys()) if (!state.has(id)) visit(id);
  const fwd = edges.filter((e) => !e.back);

  // 2. Layer = longest path from the entry over forward edges; rank = 2 * layer.
  for (const v of verts.values()) v.layer = 0;
  for (let changed = true, guard = 0; changed && guard < verts.size + 1; guard++) {
    changed = false;
    for (const e of fwd) {
      const a = verts.get(e.from), b = verts.get(e.to);
      if (b.layer < a.layer + 1) { b.layer = a.layer + 1; changed = true; }
    }
  }
  const ranks = [];
  const put = (v, r) => { v.rank = r; (ranks[r] = ranks[r] || []).push(v); };
  for (const v of [...verts.values()].sort((a, b) => a.dfs - b.dfs)) put(v, v.layer * 2);

  // 3. Long edges get a dummy vertex in every rank they cross; the first carries the label.
  fwd.forEach((e, i) => {
    const a = verts.get(e.from), b = verts.get(e.to);
    e.chain = [a];
    for (let r = a.rank + 1; r < b.rank; r++) {
      const lines = r === a.rank + 1 && e.label ? String(e.label).split('\n').flatMap((l) => wrap(l, 36)) : [];
      const d = { dummy: true, lines, up: [], down: [], dfs: a.dfs + (i + 1) / (fwd.length + 1),
        w: lines.length ? Math.ceil(Math.max(...lines.map((l) => textWidth(l, 11.5)))) + 12 : 6,
        h: lines.length ? lines.length * 14 + 6 : 0 };
      put(d, r);
      e.chain.push(d);
    }
    e.chain.push(b);
    for (let k = 1; k < e.chain.length; k++) { e.chain[k - 1].down.push(e.chain[k]); e.chain[k].up.push(e.chain[k - 1]); }
  });
  for (let r = 0; r < ranks.length; r++) ranks[r] = ranks[r] || [];

  // 4. Order inside ranks: barycenter sweeps down and up; keep the order with fewest crossings.
  const index = () => ranks.forEach((rk) => rk.forEach((v, i) => { v.pos = i; }));
  const crossings = () => {
    let c = 0;
    for (const rk of ranks) {
      const es = rk.flatMap((u) => u.down.map((v) => [u.pos, v.pos]));
      for (let i = 0; i < es.length; i++) for (let j = i + 1; j < es.length; j++) {
        if ((es[i][0] - es[j][0]) * (es[i][1] - es[j][1]) < 0) c++;
      }
    }
    return c;
  };
  ranks.forEach((rk) => rk.sort((a, b) => a.dfs - b.dfs));
  index();
  let best = crossings(), bestOrder = ranks.map((rk) => rk.slice());
  for (let it = 0; it < 8 && best > 0; it++) {
    const down = it % 2 === 0;
    const seq = down ? ranks.map((_, r) => r).slice(1) : ranks.map((_, r) => r).reverse().slice(1);
    for (const r of seq) {
      const bary = (v) => { const ns = down ? v.up : v.down; return ns.length ? ns.reduce((t, n) => t + n.pos, 0) / ns.length : v.pos; };
      ranks[r].forEach((v) => { v.bc = bary(v); });
      ranks[r].sort((a, b) => a.bc - b.bc || a.pos - b.pos);
      ranks[r].forEach((v, i) => { v.pos = i; });
    }
    const c = crossings();
    if (c < best) { best = c; bestOrder = ranks.map((rk) => rk.slice()); }
  }
  bestOrder.forEach((rk, r) => { ranks[r] = rk; });
  index();

  // 5. x: each vertex moves toward the mean x of its neighbours while keeping its rank's order
  //    and spacing (a weighted isotonic regression, pool-adjacent-violators). Dummies weigh
  //    more so long edges stay straight.
  const sep = (a, b) => (a.w + b.w) / 2 + (a.dummy && b.dummy ? 12 : GAP_X);
  ranks.forEach((rk) => { let x = 0; rk.forEach((v, i) => { x += i ? sep(rk[i - 1], v) : 0; v.x = x; }); });
  const place = (rk, target) => {
    const off = [0];
    for (let i = 1; i < rk.length; i++) off.push(off[i - 1] + sep(rk[i - 1], rk[i]));
    const blocks = [];
    rk.forEach((v, i) => {
      const wgt = v.dummy ? 2 : 1;
      blocks.push({ w: wgt, s: wgt * (target(v) - off[i]), n: 1 });
      while (blocks.length > 1) {
        const b = blocks[blocks.length - 1], a = blocks[blocks.length - 2];
        if (a.s / a.w <= b.s / b.w) break;
        blocks.pop();
        a.w += b.w; a.s += b.s; a.n += b.n;
      }
    });
    let i = 0;
    for (const b of blocks) for (let k = 0; k < b.n; k++, i++) rk[i].x = b.s / b.w + off[i];
  };
  const mean = (ns, v) => (ns.length ? ns.reduce((t, n) => t + n.x, 0) / ns.length : v.x);
  for (let it = 0; it < 12; it++) {
    const down = it % 2 === 0;
    const order = down ? ranks : ranks.slice().reverse();
    for (const rk of order) place(rk, (v) => (it >= 8 ? mean(v.up.concat(v.down), v) : mean(down ? v.up : v.down, v)));
  }

  // A long edge whose dummies can all share one x (room in every rank they cross) goes straight.
  for (const e of fwd) {
    const ds = e.chain.filter((v) => v.dummy);
    if (ds.length < 2) continue;
    const fits = (x) => ds.every((d) => {
      const rk = ranks[d.rank], l = rk[d.pos - 1], r = rk[d.pos + 1];
      return (!l || x >= l.x + sep(l, d) - 0.5) && (!r || x <= r.x - sep(d, r) + 0.5);
    });
    const a = e.chain[0].x, b = e.chain[e.chain.length - 1].x;
    const cost = (x) => Math.abs(x - a) + Math.abs(x - b) + Math.abs(x - a) / 1000; // ties: under the source
    const xs = ds.map((d) => d.x).concat([a, b]).filter(fits);
    if (xs.length) {
      const x = xs.reduce((p, q) => (cost(q) < cost(p) ? q : p));
      ds.forEach((d) => { d.x = x; });
    }
  }

  // 6. y: every rank as tall as its tallest vertex (empty label ranks stay thin).
  let y = 0;
  const rankTop = [], rankBottom = [];
  ranks.forEach((rk, r) => {
    const tall = Math.max(r % 2 ? 4 : 0, ...rk.map((v) => v.h));
    y += GAP_Y;
    rankTop[r] = y;
    rk.forEach((v) => { v.y = y + tall / 2; });
    y += tall;
    rankBottom[r] = y;
    y += GAP_Y;
  });
  const minX = Math.min(...ranks.flat().map((v) => v.x - v.w / 2));
  ranks.flat().forEach((v) => { v.x -= minX; });
  return { verts, ranks, fwd, back: edges.filter((e) => e.back), rankTop, rankBottom, height: y };
}

/** A smooth path through points (Catmull-Rom), leaving and entering nodes vertically. */
function curve(pts) {
  const n = pts.length;
  // Vertical at both ends and where a straight run begins or ends, else Catmull-Rom.
  const tan = pts.map((p, i) => {
    const a = pts[Math.max(i - 1, 0)], b = pts[Math.min(i + 1, n - 1)];
    const straight = i === 0 || i === n - 1 || Math.abs(a.x - p.x) < 1 || Math.abs(b.x - p.x) < 1;
    return { x: straight ? 0 : (b.x - a.x) / 2, y: (b.y - a.y) / (straight && i > 0 && i < n - 1 ? 2 : 1) };
  });
  let d = `M${pts[0].x},${pts[0].y}`;
  for (let i = 1; i < n; i++) {
    const a = pts[i - 1], b = pts[i], ta = tan[i - 1], tb = tan[i];
    d += ` C${a.x + ta.x / 3},${a.y + ta.y / 3} ${b.x - tb.x / 3},${b.y - tb.y / 3} ${b.x},${b.y}`;
  }
  return d;
}
/** A path through points with rounded corners (for back edges). */
function rounded(pts, r = 10) {
  let d = `M${pts[0].x},${pts[0].y}`;
  for (let i = 1; i < pts.length - 1; i++) {
    const p = pts[i], a = pts[i - 1], b = pts[i + 1];
    const la = Math.hypot(p.x - a.x, p.y - a.y), lb = Math.hypot(b.x - p.x, b.y - p.y);
    const k = Math.min(r, la / 2, lb / 2);
    d += ` L${p.x + ((a.x - p.x) * k) / la},${p.y + ((a.y - p.y) * k) / la}`;
    d += ` Q${p.x},${p.y} ${p.x + ((b.x - p.x) * k) / lb},${p.y + ((b.y - p.y) * k) / lb}`;
  }
  const z = pts[pts.length - 1];
  return `${d} L${z.x},${z.y}`;
}

/** The outline of a node, centred on 0,0. */
function shape(v) {
  const w = v.w / 2, hh = v.h / 2;
  switch (v.fam) {
    case 'entry': case 'exit': return s('rect', { x: -w, y: -hh, width: v.w, height: v.h, rx: Math.min(hh, 22), class: 'shape' });
    case 'finish': return s('circle', { r: v.w / 2, class: 'shape' });
    case 'wait': case 'waitfor':
      return s('polygon', { class: 'shape', points: `${-w + SKEW},${-hh} ${w + SKEW},${-hh} ${w - SKEW},${hh} ${-w - SKEW},${hh}` });
    case 'choice': case 'split': {
      const k = 18;
      return s('polygon', { class: 'shape', points: `${-w + k},${-hh} ${w - k},${-hh} ${w},0 ${w - k},${hh} ${-w + k},${hh} ${-w},0` });
    }
    case 'update':
      return s('g', {}, s('rect', { x: -w, y: -hh, width: v.w, height: v.h, rx: 4, class: 'shape' }),
        s('line', { x1: -w + 7, y1: -hh, x2: -w + 7, y2: hh, class: 'bar' }), s('line', { x1: w - 7, y1: -hh, x2: w - 7, y2: hh, class: 'bar' }));
    default: return s('rect', { x: -w, y: -hh, width: v.w, height: v.h, rx: 6, class: 'shape' });
  }
}

/** Spreads the ends of several edges along a node's top or bottom side, in the order of x. */
function ports(v, list, other, bottom) {
  const n = list.length;
  const room = v.fam === 'finish' ? 0 : Math.min(22, (v.w - 60) / Math.max(n, 1));
  list.sort((a, b) => other(a).x - other(b).x).forEach((e, i) => {
    const p = { x: v.x + (i - (n - 1) / 2) * room, y: v.y + (bottom ? v.h / 2 : -v.h / 2) };
    if (bottom) e.start = p; else e.end = p;
  });
}

function drawGraph(graph) {
  if (!(graph.nodes || []).length) return h('p', { class: 'muted', text: 'This journey has no step.' });
  const L = layout(graph);
  const { verts, ranks, rankTop, rankBottom } = L;
  const edgeLayer = s('g', { class: 'edges' }), labelLayer = s('g', { class: 'edge-labels' }), nodeLayer = s('g', { class: 'nodes' });
  const label = (lines, cx, cy, anchor = 'middle') => {
    const w = Math.max(...lines.map((l) => textWidth(l, 11.5))) + 12, hh = lines.length * 14 + 6;
    const left = anchor === 'middle' ? cx - w / 2 : anchor === 'start' ? cx : cx - w;
    labelLayer.append(s('g', { class: 'edge-label' },
      s('rect', { x: left, y: cy - hh / 2, width: w, height: hh, rx: 4 }),
      s('text', { x: left + w / 2, y: cy - hh / 2 + 14, 'text-anchor': 'middle' },
        lines.map((l, i) => s('tspan', { x: left + w / 2, dy: i ? 14 : 0, text: l })))));
    return { left, right: left + w };
  };

  // Forward edges: ports on node sides, then smooth curves through their dummies.
  for (const v of verts.values()) {
    ports(v, L.fwd.filter((e) => e.from === v.id), (e) => e.chain[1], true);
    ports(v, L.fwd.filter((e) => e.to === v.id), (e) => e.chain[e.chain.length - 2], false);
  }
  for (const e of L.fwd) {
    const mid = e.chain.slice(1, -1).map((d) => ({ x: d.x, y: d.y }));
    edgeLayer.append(s('path', { d: curve([e.start, ...mid, e.end]), class: 'edge', 'marker-end': 'url(#arrow)' }));
    if (e.label && e.chain[1].dummy) label(e.chain[1].lines, e.chain[1].x, e.chain[1].y);
  }

  // Back edges: around the nearer side, in their own lane (short loops inside long ones).
  // They leave and enter through a node's side when nothing is beside it, else through the
  // gap between ranks, so they never cross a node.
  let minX = 0, maxX = Math.max(...ranks.flat().map((v) => v.x + v.w / 2));
  const lanes = [];
  L.back.sort((a, b) => (verts.get(a.from).rank - verts.get(a.to).rank) - (verts.get(b.from).rank - verts.get(b.to).rank));
  for (const e of L.back) {
    const a = verts.get(e.from), b = verts.get(e.to);
    const span = ranks.slice(b.rank, a.rank + 1).flat();
    const rkA = ranks[a.rank], rkB = ranks[b.rank];
    const lastA = rkA[rkA.length - 1] === a, lastB = rkB[rkB.length - 1] === b;
    const firstA = rkA[0] === a, firstB = rkB[0] === b;
    // The side where both ends are outermost, else the side nearer to them.
    const right = lastA && lastB ? true : firstA && firstB ? false : (a.x + b.x) / 2 >= maxX / 2;
    const sg = right ? 1 : -1;
    let lane = right ? Math.max(...span.map((v) => v.x + v.w / 2)) + 26 : Math.min(...span.map((v) => v.x - v.w / 2)) - 26;
    for (const l of lanes) if (l.right === right && l.r0 <= a.rank && l.r1 >= b.rank) lane = right ? Math.max(lane, l.outer + 18) : Math.min(lane, l.outer - 18);
    const edgeA = right ? lastA : firstA, edgeB = right ? lastB : firstB;
    const pts = [];
    if (edgeA) pts.push({ x: a.x + sg * a.w / 2, y: a.y + (a === b ? a.h / 4 : 0) }, { x: lane, y: a.y + (a === b ? a.h / 4 : 0) });
    else {
      const gy = rankBottom[a.rank] + GAP_Y / 2;
      pts.push({ x: a.x + sg * a.w / 4, y: a.y + a.h / 2 }, { x: a.x + sg * a.w / 4, y: gy }, { x: lane, y: gy });
    }
    if (edgeB) pts.push({ x: lane, y: b.y - (a === b ? b.h / 4 : 0) }, { x: b.x + sg * b.w / 2, y: b.y - (a === b ? b.h / 4 : 0) });
    else {
      const gy = rankTop[b.rank] - GAP_Y / 2;
      pts.push({ x: lane, y: gy }, { x: b.x + sg * b.w / 4, y: gy }, { x: b.x + sg * b.w / 4, y: b.y - b.h / 2 });
    }
    edgeLayer.append(s('path', { d: rounded(pts), class: 'edge back', 'marker-end': 'url(#arrow)' }));
    let outer = lane;
    if (e.label) {
      const box = label(String(e.label).split('\n'), lane + sg * 6, (pts[1].y + pts[pts.length - 2].y) / 2, right ? 'start' : 'end');
      outer = right ? box.right : box.left;
    }
    lanes.push({ right, r0: a.rank, r1: b.rank, outer });
    maxX = Math.max(maxX, outer + 4);
    minX = Math.min(minX, outer - 4);
  }

  // Nodes: shape, label lines (first bold), live count lines, tooltip.
  for (const v of verts.values()) {
    const n = v.node;
    const g = s('g', { class: `node kind-${v.fam}`, transform: `translate(${v.x},${v.y})`, 'data-node': n.id, 'data-kind': n.kind,
      'data-step': v.isStep ? n.id : null, 'data-label': String(n.label || n.id) });
    g.append(s('title', { text: String(n.label || n.id) }), shape(v));
    if (v.fam === 'finish') {
      g.append(s('text', { class: 'title', y: 4, 'text-anchor': 'middle', text: v.lines[0] }));
    } else {
      let ty = -v.h / 2 + 9 + 12;
      v.lines.forEach((l, i) => { g.append(s('text', { class: i ? 'sub' : 'title', y: ty, 'text-anchor': 'middle', text: l })); ty += LINE; });
      if (v.countLines) g.append(s('text', { class: 'counts', y: ty + 1, 'text-anchor': 'middle' }));
      if (v.countLines > 1) g.append(s('text', { class: 'counts-more', y: ty + 16, 'text-anchor': 'middle' }));
    }
    if (v.fam === 'wait' || v.fam === 'waitfor') {
      const cx = v.w / 2 + SKEW - (26 * SKEW) / v.h - 17, cy = -v.h / 2 + 13; // inside the slanted corner
      g.append(s('g', { class: 'clock', transform: `translate(${cx},${cy})` },
        s('circle', { r: 6.5 }), s('path', { d: 'M0,-3.8 V0 H3' })));
    }
    nodeLayer.append(g);
  }

  const pad = 14, width = maxX - minX + pad * 2, height = L.height;
  const svg = s('svg', { viewBox: `${minX - pad} 0 ${width} ${height}`, class: 'canvas', role: 'img',
    'aria-label': `Journey ${graph.name || graph.id}` },
  s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))),
  edgeLayer, labelLayer, nodeLayer);
  svg.style.maxWidth = `${Math.ceil(width)}px`; // never drawn larger than life (CSSOM: fine under a CSP)
  return svg;
}

// ---------------------------------------------------------------- one customer (#/customer/<id>)

/** Kind families for the timeline chips. */
function kindFamily(kind) {
  if (kind === 'sent') return 'good';
  if (['suppressed', 'dropped', 'cancelled'].includes(kind)) return 'warn';
  if (['ended', 'exit'].includes(kind)) return 'end';
  if (kind === 'converted') return 'goal';
  if (kind === 'expr_failed') return 'bad';
  return 'neutral';
}
const where = (x) => [x.journey, x.version ? `v${x.version}` : null].filter(Boolean).join(' ') + (x.step ? ` · ${x.step}` : '');

function kvTable(obj, caption) {
  const entries = Object.entries(obj || {});
  return h('table', { class: 'kv' }, h('caption', { text: caption }),
    h('tbody', {}, entries.length ? entries.map(([k, v]) => h('tr', {}, h('th', { scope: 'row', class: 'mono', text: k }),
      h('td', { class: v === true ? 'yes' : v === false ? 'no' : null, text: typeof v === 'string' ? v : JSON.stringify(v) })))
      : h('tr', {}, h('td', { class: 'muted', text: 'nothing' }))));
}

function customerPage(id) {
  document.title = `Customer ${id} · journeyd`;
  $('customer-id').value = id;
  const box = h('div', {}, h('p', { class: 'muted', text: 'Loading…' }));
  $('view').replaceChildren(box);
  const mine = generation;
  api(`/customers/${encodeURIComponent(id)}`).then((c) => {
    if (mine === generation) box.replaceChildren(customerStory(c));
  }).catch((e) => {
    if (mine !== generation || e.status === 401) return;
    if (e.status === 0) return showDown(e.message);
    // 403 (a read-only token) and 404 (unknown customer) are shown in place.
    box.replaceChildren(h('div', { class: 'card error-box', role: 'alert', id: 'customer-error' },
      h('h1', {}, 'Customer ', h('span', { class: 'mono', text: id })), h('p', { text: e.message })));
  });
}

function customerStory(c) {
  const list = (items, render, none) => (items && items.length ? h('ul', { class: 'plain' }, items.map((x) => h('li', {}, render(x)))) : h('p', { class: 'muted', text: none }));
  const now = h('section', { class: 'card now', id: 'now' }, h('h2', { text: 'Now' }),
    c.quarantined ? h('div', { class: 'quarantine', role: 'alert' }, h('strong', { text: 'Quarantined' }), ' since ', timeEl(c.quarantined.since),
      h('div', { class: 'mono small', text: c.quarantined.error })) : null,
    h('h3', { text: 'In journeys' }),
    list(c.instances, (i) => [h('strong', { text: i.journey }), ` v${i.version} · at `, h('span', { class: 'mono', text: i.step }),
      h('div', { class: 'muted small' }, 'entered ', timeEl(i.entered_at), i.waiting_until ? [' · waiting until ', timeEl(i.waiting_until)] : null)], 'In no journey now.'),
    h('h3', { text: 'Sends on their way' }),
    list(c.outstanding, (o) => [h('strong', { text: o.channel }), ` from ${o.journey} · ${o.step}`,
      h('div', { class: 'muted small' }, 'expires ', timeEl(o.expires_at), ` · action ${o.action_id}`)], 'None.'),
    h('h3', { text: 'Held sends' }),
    list(c.held, (o) => [`${o.journey} · ${o.step}`, h('div', { class: 'muted small' }, 'released ', timeEl(o.release_at), ` · action ${o.action_id}`)], 'None.'),
    h('h3', { text: 'Next timer' }), h('p', {}, c.next_timer ? timeEl(c.next_timer) : h('span', { class: 'muted', text: 'none' })));

  const past = h('section', { class: 'card' }, h('h2', { text: 'Journeys so far' }),
    (c.journeys || []).length ? h('table', { class: 'data' },
      h('thead', {}, h('tr', {}, ['Journey', 'Last entered', 'Version', 'Converted', 'Inactivity due'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, c.journeys.map((j) => h('tr', {}, h('td', { class: 'mono', text: j.journey }), h('td', {}, timeEl(j.last_entered_at)),
        h('td', { text: j.last_version ? `v${j.last_version}` : '—' }), h('td', { class: j.converted ? 'yes' : null, text: j.converted ? 'yes' : 'no' }),
        h('td', {}, j.inactivity_due ? timeEl(j.inactivity_due) : '—'))))) : h('p', { class: 'muted', text: 'Never entered a journey.' }),
    h('div', { class: 'kv-pair' }, kvTable(c.profile, 'Profile'), kvTable(c.consent, 'Consent')));

  // The timeline, oldest first, with a filter by journey.
  const history = (c.history || []).map((x, i) => ({ ...x, i }))
    .sort((a, b) => (Date.parse(a.at) || 0) - (Date.parse(b.at) || 0) || a.i - b.i);
  const journeys = [...new Set(history.map((x) => x.journey).filter(Boolean))];
  const timeline = h('ol', { id: 'timeline', class: 'timeline' }, history.map((x) => h('li', { class: 'event', 'data-kind': x.kind, 'data-journey': x.journey || '' },
    h('span', { class: 'ev-time' }, timeEl(x.at)),
    h('span', { class: 'ev-where mono', text: x.journey ? where(x) : '—' }),
    h('span', { class: `chip chip-${kindFamily(x.kind)}`, text: x.kind }),
    h('span', { class: 'ev-detail', text: x.detail }))));
  if (!history.length) timeline.append(h('li', { class: 'muted', text: 'No history.' }));
  const filter = h('select', { id: 'timeline-filter', onchange: () => {
    for (const li of timeline.querySelectorAll('li.event')) li.hidden = filter.value !== '' && li.getAttribute('data-journey') !== filter.value;
  } }, h('option', { value: '', text: 'all journeys' }), journeys.map((j) => h('option', { value: j, text: j })));

  return h('div', { class: 'customer' },
    h('div', { class: 'page-head' }, h('h1', {}, 'Customer ', h('span', { class: 'mono', id: 'customer-name', text: c.customer_id })),
      h('p', { class: 'muted' }, 'journeyd clock: ', timeEl(c.clock))),
    h('div', { class: 'two-col' }, now, past),
    h('section', { class: 'card' },
      h('div', { class: 'timeline-head' }, h('h2', { text: 'Timeline' }),
        h('span', {}, h('label', { for: 'timeline-filter', text: 'Show ' }), filter)),
      timeline));
}

// ---------------------------------------------------------------- wiring

$('signin').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  route();
});
$('customer-search').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const id = $('customer-id').value.trim();
  if (id) location.hash = `#/customer/${encodeURIComponent(id)}`;
});
$('sign-out').addEventListener('click', () => signOut(''));
$('error-close').addEventListener('click', () => showError(null));
window.addEventListener('hashchange', route);
route();
