// Status page: asks /api/status every two seconds with the operator's token and draws it.
// No framework and no build step; the token lives in sessionStorage (this tab only) and goes
// out as a bearer header, never in a URL or a cookie.
"use strict";

const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);
let timer = null;

function token() { return sessionStorage.getItem("gateway-admin-token"); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
}

function duration(seconds) {
  const s = Math.floor(seconds || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(r).padStart(2, "0");
}

function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : "–"; }

function showLogin(message) {
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("ready").textContent = "signed out";
  $("ready").className = "badge";
  if (timer) { clearTimeout(timer); timer = null; }
}

async function refresh() {
  timer = null;
  const t = token();
  if (!t) { showLogin(""); return; }
  let answer;
  try {
    answer = await fetch("/api/status", { headers: { Authorization: "Bearer " + t } });
  } catch (err) {
    $("updated").textContent = "gateway unreachable";
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (answer.status === 401 || answer.status === 429) {
    sessionStorage.removeItem("gateway-admin-token");
    showLogin(answer.status === 401 ? "Wrong token." : "Too many attempts; wait a minute.");
    return;
  }
  if (answer.ok) {
    render(await answer.json());
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function render(s) {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  const ready = s.ready.ready;
  $("ready").textContent = ready ? "Ready" : (s.ready.checks.accepting_calls ? "Not ready" : "Draining");
  $("ready").className = "badge " + (ready ? "ok" : "bad");
  const p = s.provider;
  $("provider").textContent = p.up
    ? "Provider: " + p.tls_version + " " + p.tls_cipher + ", verified " + (p.peer_certificate_subject || "")
    : "Provider: not connected (" + p.state + ")";
  $("updated").textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString();

  const c = s.counts;
  $("tile-calls").textContent = c.calls;
  $("tile-encrypted").textContent = c.calls ? c.encrypted + " of " + c.calls + " encrypted" : "";
  $("tile-encrypted").className = "sub " + (c.encrypted === c.calls ? "enc srtp" : "enc plain");
  $("tile-registrations").textContent = c.registrations;
  $("tile-bans").textContent = c.bans;
  $("tile-pps").textContent = Math.round(s.load.packets_per_second);

  fill("calls", s.calls.map((call) => {
    const up = call.media.phone_to_provider, down = call.media.provider_to_phone;
    const drops = Object.values(call.media.drops).reduce((a, b) => a + b, 0);
    let enc;
    if (call.encryption === "srtp") enc = el("td", "SRTP " + call.suite, "enc srtp");
    else if (call.encryption === "pending") enc = el("td", "pending answer", "enc pending");
    else enc = el("td", "PLAINTEXT (downgrade)", "enc plain");
    return row([
      call.caller || "?", call.callee || "?", call.direction, time(call.started),
      el("td", duration(call.duration), "num"), call.state, enc,
      el("td", (up.packets_in ?? 0) + " / " + (down.packets_in ?? 0), "num"),
      el("td", drops, "num"),
      el("td", (up.jitter_ms ?? 0).toFixed(1) + " / " + (down.jitter_ms ?? 0).toFixed(1) + " ms", "num"),
      el("td", (up.lost ?? 0) + " / " + (down.lost ?? 0), "num"),
      ladderCell(call.pair),
    ]);
  }));
  $("calls-empty").hidden = s.calls.length > 0;
  const ladders = s.ladders || [];
  fill("ladders", ladders.map((c) => row([
    time(c.started), c.caller || "?", c.callee || "?", c.direction || "–",
    c.outcome || (c.ended ? "–" : "in progress"),
    el("td", c.messages + (c.dropped ? " (+" + c.dropped + " not kept)" : ""), "num"),
    ladderCell(c.pair || c.caller_call_id),
  ])));
  $("ladders-empty").hidden = ladders.length > 0;

  const phones = s.phones || [];
  fill("phones", phones.map((p) => {
    const firmware = p.outdated
      ? el("td", (p.firmware || "unknown") + " (below " + p.minimum_firmware + ")", "firmware outdated")
      : el("td", p.firmware || "–", "firmware");
    return row([p.phone, p.address, p.transport, p.vendor, p.model || "–", firmware,
      p.registered ? "yes" : "no", time(p.last_seen), el("td", p.user_agent || "–", "ua")]);
  }));
  const outdated = phones.filter((p) => p.outdated).length;
  $("phones-summary").textContent = phones.length
    ? phones.length + " phones seen, " + outdated + " below the minimum firmware"
    : "No phones seen yet (a phone appears when it registers or calls).";
  $("phones-summary").className = outdated ? "warn" : "muted";

  drawChart(s.timeline);
  fill("events", s.events.map((e) => row([
    time(e.time), e.side || "–", e.source || "–", e.rule, e.action,
    e.detail + (e.repeats ? " (+" + e.repeats + " more)" : ""),
  ])));
  fill("bans", s.bans.map((b) => row([b.address, b.rule, time(b.until), el("td", b.offences, "num")])));
  fill("certs", s.certificates.map((cert) => {
    const cls = cert.days_left < 7 ? "bad" : cert.days_left < 30 ? "warn" : "ok";
    return row([cert.role, cert.subject, new Date(cert.not_after).toLocaleDateString(),
      el("td", cert.days_left, "num days " + cls)]);
  }));
  fill("workers", s.load.workers.map((w) => {
    const cpu = w.cpu_ratio === null ? null : w.cpu_ratio * 100;
    const cell = el("td", "", "num");
    if (cpu !== null) {
      const bar = el("span", null, "bar");
      bar.style.width = Math.min(100, cpu).toFixed(0) + "px";
      cell.append(bar, cpu.toFixed(1) + " %");
    } else cell.textContent = "–";
    return row([String(w.worker), w.up ? String(w.pid) : "down", el("td", w.packets_per_second, "num"), cell]);
  }));
}

// ---- the SIP ladder of one call: LAN leg (phone ⇄ gateway) | WAN leg (gateway ⇄ provider)

let ladderRef = null;

function ladderCell(ref) {
  const td = el("td");
  const button = el("button", "ladder", "ladder-open");
  button.type = "button";
  button.dataset.ladder = ref;
  td.appendChild(button);
  return td;
}

function clock(unix) {
  // Local time to the millisecond: retransmissions and timers are told apart by it.
  const d = new Date(unix * 1000), two = (n) => String(n).padStart(2, "0");
  return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds()) + "." +
    String(d.getMilliseconds()).padStart(3, "0");
}

function arrow(m) {
  // Left to right is phone → gateway on the LAN leg and gateway → provider on the WAN leg.
  const rightward = (m.side === "lan") === (m.direction === "in");
  const status = /^SIP\/2\.0 (\d{3})/.exec(m.first_line);
  const cls = "arrow " + (rightward ? "right" : "left") + (status && Number(status[1]) >= 400 ? " fail" : "");
  return el("span", m.first_line, cls);
}

async function openLadder(ref) {
  ladderRef = ref;
  const t = token();
  if (!t) { showLogin(""); return; }
  const answer = await fetch("/api/calls/" + encodeURIComponent(ref) + "/ladder",
    { headers: { Authorization: "Bearer " + t } });
  if (answer.status === 401) { showLogin("Wrong token."); return; }
  $("ladder").hidden = false;
  if (!answer.ok) {
    $("ladder-title").textContent = "SIP ladder: no longer kept";
    fill("ladder-table", []);
    return;
  }
  const l = await answer.json();
  $("ladder-title").textContent = "SIP ladder: " + (l.caller || "?") + " → " + (l.callee || "?") +
    " (" + (l.direction || "?") + ", " + (l.outcome || "in progress") + ")";
  $("ladder-lan-id").textContent = "Call-ID " + (l.call_ids.lan || "–");
  $("ladder-wan-id").textContent = "Call-ID " + (l.call_ids.wan || "–");
  const rows = [];
  for (const m of l.messages) {
    const lan = el("td", null, "leg lan"), wan = el("td", null, "leg wan");
    (m.side === "lan" ? lan : wan).appendChild(arrow(m));
    const tr = row([el("td", clock(m.time_unix), "num"), lan, wan]);
    tr.className = "msg " + m.side;
    tr.title = m.direction === "in" ? "received from " + m.peer : "sent to " + m.peer;
    tr.addEventListener("click", () => {
      const next = tr.nextElementSibling;
      if (next && next.classList.contains("detail")) { next.remove(); return; }
      const detail = document.createElement("tr");
      detail.className = "detail";
      const td = el("td");
      td.colSpan = 3;
      td.appendChild(el("pre", (m.direction === "in" ? "received from " : "sent to ") +
        m.transport + ":" + m.peer + (m.truncated ? " (cut)" : "") + "\n\n" + m.text));
      detail.appendChild(td);
      tr.after(detail);
    });
    rows.push(tr);
  }
  fill("ladder-table", rows);
  $("ladder-dropped").textContent = l.dropped ? l.dropped + " more messages seen but not kept" : "";
  $("ladder").scrollIntoView({ block: "start" });
}

function drawChart(buckets) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 20;
  ctx.clearRect(0, 0, w, h);
  const refusals = buckets.map((b) => b.refusals + b.call_refusals);
  const bans = buckets.map((b) => b.bans);
  const top = Math.max(1, ...refusals, ...bans);
  const step = (w - pad) / buckets.length;
  ctx.fillStyle = "#57606a";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(String(top), 0, 12);
  ctx.fillText("0", 0, h - 4);
  ctx.strokeStyle = "#d0d7de";
  ctx.beginPath(); ctx.moveTo(pad, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  buckets.forEach((b, i) => {
    const x = pad + i * step;
    const rh = (refusals[i] / top) * (h - 10);
    ctx.fillStyle = "#d4a72c";
    ctx.fillRect(x + 1, h - rh, Math.max(1, step * 0.6), rh);
    if (bans[i]) {
      const bh = (bans[i] / top) * (h - 10);
      ctx.fillStyle = "#cf222e";
      ctx.fillRect(x + step * 0.6, h - bh, Math.max(1, step * 0.3), bh);
    }
  });
  const total = refusals.reduce((a, b) => a + b, 0), totalBans = bans.reduce((a, b) => a + b, 0);
  $("chart-total").textContent = " — " + total + " refusals, " + totalBans + " bans in the last hour";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("gateway-admin-token", $("token").value);
    $("token").value = "";
    refresh();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem("gateway-admin-token");
    $("ladder").hidden = true;
    showLogin("");
  });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-ladder]");
    if (button) openLadder(button.dataset.ladder);
  });
  $("ladder-close").addEventListener("click", () => { $("ladder").hidden = true; ladderRef = null; });
  $("ladder-reload").addEventListener("click", () => { if (ladderRef) openLadder(ladderRef); });
  refresh();
});
