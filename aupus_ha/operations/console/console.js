// aupus-ha console: reads the instance's JSON routes and draws them; no library, no build.
// Every text that comes from data goes in through textContent or setAttribute, never as
// markup: a device named "<img onerror=...>" is shown as those characters.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const DAY_MS = 86400000;
  const params = new URLSearchParams(window.location.search);
  // ?intervalo=N: seconds between refreshes (default 5); the gaps report, a heavier
  // query, at most every 30 s. ?de=ISO&ate=ISO: a fixed window for the gap bars
  // (the demo points at its own simulated day); default: the last 24 h.
  const INTERVAL_MS = clamp(Number(params.get("intervalo")) || 5, 1, 300) * 1000;
  const GAPS_EVERY_MS = Math.max(INTERVAL_MS, 30000);
  const FIXED_FROM = parseDate(params.get("de"));
  const FIXED_TO = parseDate(params.get("ate"));
  const ROLES = { leader: "líder", standby: "reserva", observer: "observador",
    disabled: "desativada", stopped: "parada", evicted: "removida", gone: "ausente" };
  const QUALITIES = { bom: "bom", boa: "bom", GOOD: "bom", parcial: "parcial", ruim: "ruim",
    BAD: "ruim" };
  const REASONS = { initial: "primeira liderança", released: "entregue pelo líder",
    evicted: "líder silencioso removido", lost: "sessão do líder perdida" };
  const PALETTE = ["#1f5f99", "#2e9d5b", "#8e44ad", "#d35400", "#16a085", "#7f8c8d"];

  const state = { equipment: null, gaps: null, gapsAt: 0, busy: false };

  // --- small helpers ----------------------------------------------------------------------

  function clamp(value, low, high) { return Math.min(high, Math.max(low, value)); }

  function parseDate(text) {
    if (!text) return null;
    const d = new Date(text);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function $(id) { return document.getElementById(id); }

  function setText(id, text, cls) {
    const node = $(id);
    if (!node) return;
    node.textContent = text == null ? "—" : String(text);
    if (cls !== undefined) node.className = cls;
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text != null) node.textContent = String(text);
    return node;
  }

  function titled(node, text) {
    node.appendChild(svg("title", {}, text));
    return node;
  }

  // Charts are drawn at the size they are shown, so their text keeps its size.
  function drawingWidth(box) {
    return Math.max(200, Math.round(box.clientWidth || 600));
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function number(value) {
    return typeof value === "number" ? value.toLocaleString("pt-BR") : "—";
  }

  function clock(value) {
    const d = value instanceof Date ? value : parseDate(value);
    if (!d) return "—";
    return d.toLocaleString("pt-BR", { timeZone: "America/Sao_Paulo", day: "2-digit",
      month: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function age(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
    const s = Math.max(0, seconds);
    if (s < 90) return `há ${Math.round(s)} s`;
    if (s < 5400) return `há ${Math.round(s / 60)} min`;
    if (s < 172800) return `há ${(s / 3600).toFixed(1).replace(".", ",")} h`;
    return `há ${Math.round(s / 86400)} dias`;
  }

  function since(value) {
    const d = parseDate(value);
    return d ? (Date.now() - d.getTime()) / 1000 : null;
  }

  function colour(name) {
    let h = 0;
    for (const ch of String(name)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  // The legacy routes answer in the envelope {success, data, meta}; the others bare.
  function unwrap(body) {
    if (body && typeof body === "object" && "success" in body && "data" in body) {
      return body.data;
    }
    return body;
  }

  async function getJson(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 8000);
    try {
      const resp = await fetch(path, { signal: abort.signal, cache: "no-store",
        headers: { Accept: "application/json" } });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      return { path, status: resp.status, body: unwrap(body) };
    } catch (e) {
      return { path, status: 0, body: null };
    } finally {
      clearTimeout(timer);
    }
  }

  // --- leadership, instances, handovers -----------------------------------------------------

  function showLeader(leader, cluster) {
    const term = (cluster && cluster.leadership) || {};
    const id = leader ? leader.leader_id : term.leader_instance_id;
    setText("lider-nome", id || "nenhum líder", id ? "" : "erro");
    const sinceAt = (leader && leader.leader_since) || term.acquired_at;
    setText("lider-desde", sinceAt ? `${clock(sinceAt)} (${age(since(sinceAt))})` : "—");
    setText("lider-epoca", (leader && leader.epoch) != null ? leader.epoch : term.epoch);
    const flushed = (leader && leader.last_flush_at) || term.last_flush_at;
    setText("lider-flush", flushed ? age(since(flushed)) : "—");
    if (leader) {
      setText("instancia-nome", leader.instance_id);
      setText("instancia-papel", ROLES[leader.role] || leader.role);
    }
    document.title = `aupus-ha · líder ${id || "nenhum"}`;
  }

  // A lease row says what its process last wrote: one that still says "leader" while the
  // term belongs to another instance is a dead or cut-off process, never a second leader.
  function instanceRole(inst, leaderId) {
    if (inst.stopped_at != null || inst.role === "stopped") return ["parada", ""];
    if (inst.role === "leader") {
      return inst.instance_id === leaderId ? ["líder", "papel-lider"] : ["sem resposta", "erro"];
    }
    return [ROLES[inst.role] || inst.role, ""];
  }

  function showInstances(cluster) {
    const body = $("instancias-linhas");
    clear(body);
    const term = (cluster && cluster.leadership) || {};
    const leaderId = term.released_at == null ? term.leader_instance_id : null;
    for (const inst of (cluster && cluster.instances) || []) {
      const stats = inst.stats || {};
      const tr = el("tr");
      tr.setAttribute("data-instancia", inst.instance_id);
      tr.appendChild(el("td", inst.instance_id));
      const [role, cls] = instanceRole(inst, leaderId);
      tr.appendChild(el("td", role, cls));
      tr.appendChild(el("td", age(inst.heartbeat_age_s)));
      tr.appendChild(el("td", number(stats.pending), "num"));
      const mqtt = stats.mqtt_connected;
      tr.appendChild(el("td", mqtt == null ? "—" : mqtt ? "sim" : "não", mqtt ? "ok" : "erro"));
      body.appendChild(tr);
    }
  }

  function showHandovers(cluster) {
    const list = $("trocas-lista");
    const box = $("trocas-grafico");
    clear(list);
    clear(box);
    const rows = ((cluster && cluster.handovers) || [])
      .filter((h) => parseDate(h.at)).slice().reverse(); // oldest first
    if (!rows.length) {
      list.appendChild(el("li", "nenhuma troca registrada"));
      return;
    }
    for (const h of rows.slice().reverse()) {
      const gap = h.gap_ms != null ? `, lacuna ${number(h.gap_ms)} ms` : "";
      list.appendChild(el("li",
        `${clock(h.at)} · época ${h.epoch}: ${h.from_instance_id || "—"} → ${h.to_instance_id}` +
        ` (${REASONS[h.reason] || h.reason}${gap})`));
    }
    // Who led when: one band per epoch, from its handover to the next one (or now).
    const width = drawingWidth(box);
    const height = 46;
    const start = parseDate(rows[0].at).getTime();
    const end = Math.max(Date.now(), start + 1000);
    const x = (t) => ((t - start) / (end - start)) * width;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "linha do tempo da liderança" });
    rows.forEach((h, i) => {
      const from = parseDate(h.at).getTime();
      const to = i + 1 < rows.length ? parseDate(rows[i + 1].at).getTime() : end;
      const band = svg("rect", { x: x(from), y: 4, width: Math.max(1, x(to) - x(from)),
        height: 22, fill: colour(h.to_instance_id), class: "epoca" });
      titled(band, `época ${h.epoch}: ${h.to_instance_id} desde ${clock(h.at)}`);
      chart.appendChild(band);
      if (x(to) - x(from) > 60) {
        chart.appendChild(svg("text", { x: x(from) + 4, y: 19, class: "rotulo" },
          `${h.to_instance_id} (${h.epoch})`));
      }
    });
    chart.appendChild(svg("text", { x: 0, y: 40, class: "eixo" }, clock(new Date(start))));
    chart.appendChild(svg("text", { x: width, y: 40, class: "eixo", "text-anchor": "end" },
      "agora"));
    box.appendChild(chart);
  }

  // --- ingest rate ---------------------------------------------------------------------------

  function showIngestRate(rate) {
    const box = $("ingestao-grafico");
    clear(box);
    if (!rate || !Array.isArray(rate.points)) {
      setText("ingestao-resumo", "indisponível", "erro");
      return;
    }
    setText("ingestao-resumo", `${number(rate.total)} linhas na última hora · média ` +
      `${number(rate.per_minute_avg)} por minuto`, "");
    const width = drawingWidth(box);
    const height = 110;
    const top = 14;
    const bottom = 18;
    const points = rate.points;
    const peak = Math.max(1, ...points.map((p) => p.rows));
    const step = width / Math.max(1, points.length);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "linhas gravadas por minuto na última hora" });
    points.forEach((p, i) => {
      const h = ((height - top - bottom) * p.rows) / peak;
      const bar = svg("rect", { x: i * step + 0.5, y: height - bottom - h,
        width: Math.max(1, step - 1), height: h, class: "barra-ingestao" });
      titled(bar, `${clock(p.minute)}: ${number(p.rows)} linhas`);
      chart.appendChild(bar);
    });
    chart.appendChild(svg("text", { x: 0, y: 10, class: "eixo" }, `${number(peak)}/min`));
    chart.appendChild(svg("text", { x: 0, y: height - 4, class: "eixo" }, "−60 min"));
    chart.appendChild(svg("text", { x: width, y: height - 4, class: "eixo",
      "text-anchor": "end" }, "agora"));
    box.appendChild(chart);
  }

  // --- buffer and spool ------------------------------------------------------------------------

  function showBuffer(health, stats) {
    const dl = $("buffer-dados");
    clear(dl);
    const add = (label, value) => {
      dl.appendChild(el("dt", label));
      dl.appendChild(el("dd", value == null ? "—" : value));
    };
    const checks = (health && health.checks) || {};
    const buffer = checks.buffer || {};
    add("Pendentes na memória", `${number(buffer.pending)} de ${number(buffer.max)}`);
    const spool = (stats && (stats.spool || (stats.buffer && stats.buffer.spool))) || null;
    if (spool) {
      const files = spool.files === 1 ? "1 arquivo" : `${number(spool.files)} arquivos`;
      add("Spool em disco", `${files}, ${bytes(spool.bytes)}` +
        (spool.maxBytes ? ` de ${bytes(spool.maxBytes)}` : ""));
      if (typeof spool.backlog === "boolean") {
        add("Leituras só no disco", spool.backlog ? "sim (reenvio pendente)" : "não");
      }
    }
    if (stats && typeof stats.totalSaved === "number") {
      add("Gravadas por esta instância", number(stats.totalSaved));
      add("Duplicadas ignoradas", number(stats.totalSkipped));
    }
    if (stats && stats.redis) {
      const states = { online: "ativo", offline: "spool cheio", disabled: "desativado" };
      add("Estado do buffer", states[stats.redis] || stats.redis);
    }
    if (checks.intake) {
      add("Mensagens recebidas", number(checks.intake.messages));
      add("Rejeitadas", number(checks.intake.rejects));
    }
    if (checks.recentData) {
      add("Último dado gravado", checks.recentData.lastDataTimestamp
        ? age(since(checks.recentData.lastDataTimestamp)) : "nenhum");
    }
    const status = health ? health.status : null;
    const labels = { healthy: "saudável", degraded: "degradada", unhealthy: "com problema" };
    setText("instancia-saude", labels[status] || "sem resposta",
      status === "healthy" ? "ok" : status === "degraded" ? "aviso" : "erro");
  }

  function bytes(value) {
    if (typeof value !== "number") return "—";
    if (value < 1024) return `${value} B`;
    if (value < 1048576) return `${(value / 1024).toFixed(1).replace(".", ",")} KiB`;
    return `${(value / 1048576).toFixed(1).replace(".", ",")} MiB`;
  }

  // --- equipment table -------------------------------------------------------------------------

  function gapWindow() {
    const gaps = state.gaps;
    const to = FIXED_TO || parseDate(gaps && gaps.to) || new Date();
    const from = FIXED_FROM || parseDate(gaps && gaps.from) || new Date(to.getTime() - DAY_MS);
    return { from: from.getTime(), to: Math.max(to.getTime(), from.getTime() + 1000) };
  }

  function equipmentRows() {
    const diag = state.equipment || {};
    const byId = new Map();
    const take = (e, active) => {
      byId.set(String(e.id), { id: String(e.id), nome: e.nome, active,
        last: active ? e.ultima_recepcao : e.ultima_recepcao_conhecida,
        rows24h: active ? Number(e.registros_24h) : 0, quality: e.ultima_qualidade,
        inactivity: e.status_inatividade, gaps: null });
    };
    (diag.funcionando || []).forEach((e) => take(e, true));
    (diag.inativos || []).forEach((e) => take(e, false));
    for (const g of (state.gaps && state.gaps.equipamentos) || []) {
      const id = String(g.equipamento_id);
      if (!byId.has(id)) {
        byId.set(id, { id, nome: g.nome, active: null, last: null, rows24h: null,
          quality: null, inactivity: null, gaps: null });
      }
      byId.get(id).gaps = g;
    }
    return [...byId.values()].sort((a, b) =>
      (a.active === false ? 0 : 1) - (b.active === false ? 0 : 1) ||
      String(a.nome || a.id).localeCompare(String(b.nome || b.id), "pt-BR"));
  }

  function showEquipment() {
    const body = $("equipamentos-linhas");
    clear(body);
    const rows = equipmentRows();
    const diag = state.equipment;
    const windowed = gapWindow();
    setText("janela-lacunas", FIXED_FROM || FIXED_TO
      ? `(${clock(new Date(windowed.from))} → ${clock(new Date(windowed.to))})`
      : "(últimas 24 h)");
    if (diag) {
      setText("equipamentos-resumo", `${number(diag.ativos)} com dados nas últimas 24 h, ` +
        `${number(diag.countInativos)} sem dados, de ${number(diag.configurados)} configurados`,
        diag.countInativos ? "aviso" : "");
    } else if (!rows.length) {
      setText("equipamentos-resumo", "aguardando /api/v1/mqtt/diagnostico/equipamentos…");
    }
    for (const row of rows) body.appendChild(equipmentRow(row, windowed));
  }

  function equipmentRow(row, windowed) {
    const tr = el("tr", null, row.active === false ? "inativo" : "");
    tr.setAttribute("data-equipamento", row.id);
    const name = el("td");
    name.appendChild(el("strong", row.nome || row.id, "nome"));
    name.appendChild(el("span", row.id, "pequeno"));
    tr.appendChild(name);
    const lastAge = since(row.last);
    // With a fixed window (?ate=), quiet means quiet before its end, not before now.
    const reference = FIXED_TO ? (FIXED_TO.getTime() - Date.now()) / 1000 : 0;
    const stale = row.gaps && row.gaps.threshold_s &&
      lastAge + reference > row.gaps.threshold_s;
    const lastText = row.active === false
      ? String(row.inactivity || "sem dados")
      : row.last ? age(lastAge) : "—";
    tr.appendChild(el("td", lastText, row.active === false ? "erro" : stale ? "aviso" : ""));
    tr.appendChild(el("td", number(row.rows24h), "num"));
    const quality = el("td");
    if (row.quality) {
      quality.appendChild(el("span", row.quality, `selo ${QUALITIES[row.quality] || ""}`));
    } else {
      quality.textContent = "—";
    }
    tr.appendChild(quality);
    const coverage = row.gaps && typeof row.gaps.coverage_pct === "number"
      ? `${row.gaps.coverage_pct.toFixed(1).replace(".", ",")} %` : "—";
    tr.appendChild(el("td", coverage, "num"));
    const bar = el("td", null, "barra");
    bar.appendChild(gapBar(row, windowed));
    tr.appendChild(bar);
    return tr;
  }

  // The window as one bar: green where the equipment sent, red for each gap the report
  // found (orange when it runs to the end: the equipment is still quiet). The report is
  // refreshed less often than the table: a silence newer than it is drawn from the last
  // reading the table knows, once it is longer than the report's threshold.
  function gapBar(row, windowed) {
    const width = 400;
    const height = 16;
    const span = windowed.to - windowed.from;
    const x = (t) => clamp(((t - windowed.from) / span) * width, 0, width);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
      height, role: "img", class: "lacunas", "aria-label": `lacunas de ${row.nome || row.id}` });
    chart.appendChild(svg("rect", { x: 0, y: 0, width, height, class: "com-dados" }));
    const report = row.gaps || {};
    let drawn = 0;
    let open = false;
    for (const gap of report.gaps || []) {
      const start = parseDate(gap.start);
      const end = parseDate(gap.end);
      if (!start || !end) continue;
      const quiet = gap.kind === "end" || gap.kind === "all";
      open = open || quiet;
      const rect = svg("rect", { x: x(start.getTime()), y: 0,
        width: Math.max(2, x(end.getTime()) - x(start.getTime())), height,
        class: quiet ? "lacuna silencio" : "lacuna", "data-inicio": gap.start,
        "data-fim": gap.end });
      titled(rect, `${clock(start)} → ${clock(end)}: ${number(Math.round(gap.minutes))} min, ` +
        `${number(gap.expected_readings)} leituras esperadas`);
      chart.appendChild(rect);
      drawn += 1;
    }
    const last = parseDate(row.last);
    const limit = report.threshold_s;
    if (!open && !FIXED_TO && last && limit && Date.now() - last.getTime() > limit * 1000) {
      const rect = svg("rect", { x: x(last.getTime()), y: 0,
        width: Math.max(2, width - x(last.getTime())), height, class: "lacuna silencio" });
      titled(rect, `sem dados desde ${clock(last)}`);
      chart.appendChild(rect);
      drawn += 1;
    }
    chart.setAttribute("data-lacunas", String(drawn));
    return chart;
  }

  // --- the refresh loop ------------------------------------------------------------------------

  function gapsPath() {
    const to = FIXED_TO || new Date();
    const from = FIXED_FROM || new Date(to.getTime() - DAY_MS);
    const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
    return `/health/gaps?${query.toString()}`;
  }

  function safely(draw) {
    try {
      draw();
      return true;
    } catch (e) {
      return false;
    }
  }

  async function refresh() {
    if (state.busy) return; // a slow database: never pile requests up
    state.busy = true;
    try {
      const wantGaps = Date.now() - state.gapsAt >= GAPS_EVERY_MS;
      const calls = [getJson("/health/leader"), getJson("/health/cluster"),
        getJson("/health"), getJson("/health/ingest-rate"),
        getJson("/api/v1/mqtt/diagnostico/buffer/stats"),
        getJson("/api/v1/mqtt/diagnostico/equipamentos")];
      if (wantGaps) calls.push(getJson(gapsPath()));
      const [leader, cluster, health, rate, stats, equipment, gaps] = await Promise.all(calls);
      const failed = [leader, cluster, rate, equipment, gaps]
        .filter((r) => r && (r.status === 0 || r.status >= 500 && !r.body))
        .map((r) => r.path.split("?")[0]);
      if (equipment.status === 200 && equipment.body) state.equipment = equipment.body;
      if (gaps && gaps.status === 200 && gaps.body) {
        state.gaps = gaps.body;
        state.gapsAt = Date.now();
      }
      // One card that cannot draw what it got (an older instance's body, say) must not
      // keep the others from refreshing.
      const broken = [
        safely(() => showLeader(leader.body, cluster.body)),
        safely(() => showInstances(cluster.body)),
        safely(() => showHandovers(cluster.body)),
        safely(() => showIngestRate(rate.status === 200 ? rate.body : null)),
        safely(() => showBuffer(health.body, stats.status === 200 ? stats.body : null)),
        safely(() => showEquipment()),
      ].filter((ok) => !ok).length;
      const problems = [];
      if (failed.length) problems.push(`sem resposta: ${failed.join(", ")}`);
      if (broken) problems.push(`${broken} painel(is) com dados inesperados`);
      const when = new Date().toLocaleTimeString("pt-BR", { timeZone: "America/Sao_Paulo" });
      setText("atualizado", problems.length
        ? `atualizado às ${when}; ${problems.join("; ")}`
        : `atualizado às ${when} · a cada ${INTERVAL_MS / 1000} s`,
        problems.length ? "atualizado falha" : "atualizado");
      document.body.setAttribute("data-atualizacoes",
        String(Number(document.body.getAttribute("data-atualizacoes") || 0) + 1));
    } finally {
      state.busy = false;
    }
  }

  refresh();
  setInterval(refresh, INTERVAL_MS);
})();
