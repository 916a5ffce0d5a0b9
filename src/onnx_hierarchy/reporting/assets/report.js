// onnx-hierarchy report: the module tree with its numbers, search, and one module's data flow on click.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  // [path, class, parent, own, nodes, params, calls, ops, sources, ms, error, other, [status, detail, ratio]]
  const modules = data.modules;
  const children = modules.map(() => []);
  modules.forEach((m, i) => { if (m[2] !== null) children[m[2]].push(i); });
  const rows = [];
  const body = document.getElementById("rows");
  const maxMs = Math.max(0, ...modules.map((m) => m[9] || 0));
  const maxError = Math.max(0, ...modules.map((m) => m[10] || 0));

  function shade(value, max, hue) {
    if (value === null || value === undefined || !max) return "";
    const light = 100 - Math.round(45 * (value / max));
    return `background: hsl(${hue}, 80%, ${light}%)`;
  }

  // Errors shade by how far along their tolerance they are (over tolerance: full colour), else by size.
  function errorShade(m) {
    const ratio = m[12] ? m[12][2] : null;
    return ratio === null || ratio === undefined ? shade(m[10], maxError, 270) : shade(Math.min(ratio, 1), 1, 270);
  }

  function text(value) { return value === null || value === undefined ? "" : String(value); }

  function row(index, depth) {
    const m = modules[index];
    const tr = document.createElement("tr");
    tr.className = "module";
    tr.dataset.index = index;
    tr.dataset.path = m[0];
    const name = depth === 0 ? "(root)" : m[0].split(".").pop();
    const sources = Object.entries(m[8]).map(([k, v]) => `${k} ${v}`).join(", ");
    const ops = Object.entries(m[7]).slice(0, 3).map(([k, v]) => `${k} ${v}`).join(", ");
    tr.innerHTML =
      `<td style="padding-left:${6 + 14 * depth}px"><span class="toggle"></span><span class="name"></span> ` +
      `<span class="cls"></span></td><td class="num"></td><td class="num"></td><td class="num"></td>` +
      `<td class="num"></td><td class="num" style="${shade(m[9], maxMs, 10)}"></td>` +
      `<td class="num" style="${errorShade(m)}"></td><td class="status"></td><td class="ops"></td>` +
      `<td class="other"></td>`;
    const cells = tr.children;
    tr.querySelector(".name").textContent = name;
    tr.querySelector(".name").title = m[0];
    tr.querySelector(".cls").textContent = m[1];
    cells[1].textContent = m[4];
    cells[2].textContent = m[5].toLocaleString();
    cells[3].textContent = m[6];
    cells[4].textContent = sources;
    cells[5].textContent = m[9] === null ? "" : m[9].toFixed(3);
    cells[6].textContent = m[10] === null ? "" : m[10].toExponential(1);
    if (m[12]) {
      const [status, detail] = m[12];
      cells[7].textContent = status;
      cells[7].classList.add(status === "over" || status === "ok" ? status : "other");
      cells[6].title = cells[7].title = detail;
    }
    cells[8].textContent = ops;
    if (m[11]) { cells[9].textContent = m[11][0] === null ? "absent" : m[11][0]; cells[9].title = m[11][1]; }
    tr.querySelector(".toggle").textContent = children[index].length ? "▸" : "";
    body.appendChild(tr);
    rows[index] = tr;
    children[index].forEach((child) => row(child, depth + 1));
  }

  modules.forEach((m, i) => { if (m[2] === null) row(i, 0); });
  const expanded = new Set([0]);

  // Columns nothing fills (no profile: no time; no verify: no error or status) are left out.
  const table = document.getElementById("modules");
  const headers = table.querySelectorAll("thead th");
  headers.forEach((th, column) => {
    if (rows.some((tr) => tr.children[column].textContent !== "")) return;
    th.style.display = "none";
    rows.forEach((tr) => { tr.children[column].style.display = "none"; });
  });

  function visible(index) {
    for (let p = modules[index][2]; p !== null; p = modules[p][2]) if (!expanded.has(p)) return false;
    return true;
  }

  function refresh(filter) {
    const query = (filter || "").toLowerCase();
    let keep = null;
    if (query) {
      keep = new Set();
      modules.forEach((m, i) => {
        if (m[0].toLowerCase().includes(query) || m[1].toLowerCase().includes(query)) {
          for (let p = i; p !== null; p = modules[p][2]) keep.add(p);
        }
      });
    }
    modules.forEach((m, i) => {
      const show = keep ? keep.has(i) : visible(i);
      rows[i].classList.toggle("hidden", !show);
      if (children[i].length) rows[i].querySelector(".toggle").textContent = expanded.has(i) || keep ? "▾" : "▸";
    });
  }

  const search = document.getElementById("search");
  search.addEventListener("input", () => refresh(search.value));
  body.addEventListener("click", (event) => {
    const tr = event.target.closest("tr.module");
    if (!tr) return;
    const index = Number(tr.dataset.index);
    if (event.target.classList.contains("toggle")) {
      if (expanded.has(index)) expanded.delete(index); else expanded.add(index);
      refresh(search.value);
      return;
    }
    document.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
    tr.classList.add("selected");
    showGraph(index);
  });

  // One module's data flow: its nodes in nested clusters, the values entering and leaving it.
  const nodes = data.nodes;  // [name, op, module index, inputs, outputs]
  const LIMIT = 400;

  function within(index, ancestor) {
    for (let p = index; p !== null; p = modules[p][2]) if (p === ancestor) return true;
    return false;
  }

  function showGraph(index) {
    const panel = document.getElementById("graph");
    const mine = nodes.filter((n) => within(n[2], index));
    const title = document.getElementById("graph-title");
    title.textContent = `${modules[index][0] || "(root)"}: ${mine.length} nodes`;
    panel.innerHTML = "";
    if (!mine.length) return;
    if (mine.length > LIMIT) {
      panel.textContent = `${mine.length} nodes: too many to lay out here; pick a module below it.`;
      return;
    }
    const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
    g.setGraph({ rankdir: "TB", nodesep: 12, ranksep: 22, marginx: 8, marginy: 8 });
    g.setDefaultEdgeLabel(() => ({}));
    const producer = new Map();
    mine.forEach((n) => n[4].forEach((v) => producer.set(v, n[0])));
    const clusters = new Set();
    mine.forEach((n) => {
      g.setNode("n:" + n[0], { label: n[1], width: Math.max(50, 7 * n[1].length), height: 22, kind: "node" });
      let child = "n:" + n[0];
      for (let p = n[2]; p !== null && p !== modules[index][2]; p = modules[p][2]) {
        const id = "m:" + p;
        if (!clusters.has(id)) {
          const short = modules[p][0].split(".").pop() || "(root)";
          clusters.add(id);
          g.setNode(id, { label: `${short} ${modules[p][1]}`, kind: "cluster", paddingTop: 14 });
        }
        g.setParent(child, id);
        child = id;
      }
    });
    const outside = new Set();
    mine.forEach((n) => n[3].forEach((v) => {
      if (!v) return;
      if (producer.has(v)) g.setEdge("n:" + producer.get(v), "n:" + n[0], {}, v + ">" + n[0]);
      else if (!data.weights.includes(v)) {
        if (!outside.has(v)) { outside.add(v); g.setNode("in:" + v, { label: v, width: Math.max(50, 7 * v.length), height: 20, kind: "boundary" }); }
        g.setEdge("in:" + v, "n:" + n[0], {}, v + ">" + n[0]);
      }
    }));
    // Values leaving the module: read by a node outside it, or returned by the model.
    const inside = new Set(mine.map((n) => n[0]));
    const readOutside = new Set();
    nodes.forEach((n) => { if (!inside.has(n[0])) n[3].forEach((v) => readOutside.add(v)); });
    mine.forEach((n) => n[4].forEach((v) => {
      if (v && (readOutside.has(v) || data.outputs.includes(v))) {
        g.setNode("out:" + v, { label: v, width: Math.max(50, 7 * v.length), height: 20, kind: "boundary" });
        g.setEdge("n:" + n[0], "out:" + v, {}, n[0] + ">" + v);
      }
    }));
    dagre.layout(g);
    const size = g.graph();
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", size.width);
    svg.setAttribute("height", size.height);
    function add(parent, tag, attrs) {
      const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
      Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, v));
      parent.appendChild(el);
      return el;
    }
    const depthOf = (id) => { let d = 0; for (let p = g.parent(id); p; p = g.parent(p)) d++; return d; };
    [...clusters].sort((a, b) => depthOf(a) - depthOf(b)).forEach((id) => {
      const c = g.node(id);
      const group = add(svg, "g", { class: "cluster" });
      add(group, "rect", { x: c.x - c.width / 2, y: c.y - c.height / 2, width: c.width, height: c.height, rx: 4 });
      add(group, "text", { x: c.x - c.width / 2 + 4, y: c.y - c.height / 2 + 11 }).textContent = c.label;
    });
    g.edges().forEach((e) => {
      const points = g.edge(e).points.map((p) => `${p.x},${p.y}`).join(" ");
      add(svg, "polyline", { class: "edge", points });
    });
    g.nodes().filter((id) => !clusters.has(id)).forEach((id) => {
      const n = g.node(id);
      const group = add(svg, "g", { class: n.kind === "boundary" ? "boundary" : "node" });
      add(group, "rect", { x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height, rx: 3 });
      add(group, "text", { x: n.x - n.width / 2 + 4, y: n.y + 4 }).textContent = n.label;
      add(group, "title", {}).textContent = id.slice(id.indexOf(":") + 1);
    });
    panel.appendChild(svg);
  }

  // Open on what the reader came for: the first module over tolerance or the hottest path, shown and
  // selected with its data flow drawn; otherwise as many levels as fit on a screen.
  const focus = data.focus === null ? -1 : modules.findIndex((m) => m[0] === data.focus);
  if (focus >= 0) {
    for (let p = modules[focus][2]; p !== null; p = modules[p][2]) expanded.add(p);
  } else {
    const FIT = 40;
    let level = children[0] || [];
    while (level.length) {
      const shown = modules.filter((m, i) => visible(i)).length;
      const opening = level.filter((i) => children[i].length);
      const added = opening.reduce((n, i) => n + children[i].length, 0);
      if (!added || shown + added > FIT) break;
      opening.forEach((i) => expanded.add(i));
      level = opening.flatMap((i) => children[i]);
    }
  }
  refresh("");
  if (focus >= 0) {
    rows[focus].classList.add("selected");
    rows[focus].scrollIntoView({ block: "center" });
    showGraph(focus);
  }
  window.onnxHierarchyReport = { showGraph };
})();
