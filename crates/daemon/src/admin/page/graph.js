// journeyd operator page: the journey graph, laid out and drawn as SVG in the browser.
// Loaded before app.js, whose helpers (h, s, SVG_NS, FONT) it calls when it draws.
'use strict';

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

