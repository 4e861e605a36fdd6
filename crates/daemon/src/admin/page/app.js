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
