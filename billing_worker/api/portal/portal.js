// The customer page: reads the portal token from the URL fragment, then fills the page
// from the billing API. Numbers are shown exactly as the API gives them.
"use strict";

(function () {
  const TOKEN_KEY = "billing-portal-token";
  const SVG = "http://www.w3.org/2000/svg";
  const INVOICES_PER_PAGE = 12;
  const MESSAGES = {
    missing: ["No billing link", "Open this page from the link in your product: it signs you in to your billing details."],
    expired: ["This link has expired — ask for a new one", "Billing links work for a short while only. Go back to the product and open billing again."],
    invalid: ["This link is not valid — ask for a new one", "It may be incomplete, or not meant for this page. Go back to the product and open billing again."],
    unreachable: ["Billing is not reachable right now", "Check your connection, then try again."],
    failed: ["Something went wrong", "Your billing details could not be loaded. Try again in a moment."],
  };

  const $ = (id) => document.getElementById(id);
  let token = null;
  let clock = null; // the API's time, from /v1/portal/me

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && problem.detail) || "HTTP " + status);
      this.status = status;
      this.reason = problem && problem.reason;
    }
  }

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    let found = fragment.get("token");
    if (location.hash) {
      // out of the address bar, the history and any bookmark
      history.replaceState(null, "", location.pathname + location.search);
    }
    try {
      if (found) sessionStorage.setItem(TOKEN_KEY, found);
      else found = sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      // storage may be off (a sandboxed frame): the token lives for this page only
    }
    return found;
  }

  async function api(path) {
    let response;
    try {
      response = await fetch(new URL(path, location.href), {
        headers: { Authorization: "Bearer " + token, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      throw new ApiError(0, null);
    }
    if (!response.ok) {
      let problem = null;
      try {
        problem = await response.json();
      } catch (e) {
        problem = null;
      }
      throw new ApiError(response.status, problem);
    }
    return response.json();
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attributes, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    node.append(...children);
    return node;
  }

  const DAY = { month: "short", day: "numeric", timeZone: "UTC" };
  const DATE = { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" };

  function date(iso, options) {
    return el("time", { datetime: iso }, new Date(iso).toLocaleDateString(undefined, options || DATE));
  }

  function lastDay(endIso) {
    // periods end at the first instant of the next; people read the day before
    return new Date(new Date(endIso).getTime() - 1).toISOString();
  }

  function span(period) {
    const last = lastDay(period.end);
    const sameYear = period.start.slice(0, 4) === last.slice(0, 4);
    return el("span", { class: "span" }, date(period.start, sameYear ? DAY : DATE), " – ", date(last));
  }

  function money(amount, currency) {
    return el("span", { class: "money" }, amount, " ", el("abbr", { class: "currency" }, currency.toUpperCase()));
  }

  function words(meter) {
    return meter.replace(/_/g, " ");
  }

  function showProblem(kind, retry) {
    const [title, text] = MESSAGES[kind];
    $("loading").hidden = true;
    $("content").hidden = true;
    $("problem-title").textContent = title;
    $("problem-text").textContent = text;
    $("problem").dataset.kind = kind;
    $("retry").hidden = !retry;
    $("problem").hidden = false;
    document.title = title + " · Billing";
    document.body.dataset.state = "problem";
  }

  function problemKind(error) {
    if (error.status === 0) return "unreachable";
    if (error.status === 401) return error.reason === "token_expired" ? "expired" : "invalid";
    if (error.status === 403 || error.status === 404) return "invalid";
    return "failed";
  }

  function sectionFailed(container, error) {
    container.replaceChildren(
      el("p", { class: "note error" }, problemKind(error) === "expired" ? MESSAGES.expired[0] : "This part could not be loaded. Reload the page to try again."),
    );
  }

  function renderPlan(account) {
    $("plan-name").textContent = account.plan;
    $("plan-status").textContent = account.status;
    $("plan-status").classList.add(account.status);
    $("plan-period").replaceChildren(span(account.period));
    const days = Math.ceil((new Date(account.period.end) - clock) / 86400000);
    $("plan-left").replaceChildren(date(account.period.end), days > 0 ? " · in " + days + (days === 1 ? " day" : " days") : "");
  }

  function progress(meter) {
    const percent = Math.min(Number(meter.used_percent), 100);
    const level = percent >= 100 ? "over" : percent >= 80 ? "high" : "ok";
    const label = meter.used + " of " + meter.limit + " " + words(meter.meter) + " used";
    const fill = el("div", { class: "fill " + level });
    fill.style.width = percent + "%";
    return el("div", {
      class: "bar",
      role: "progressbar",
      "aria-label": words(meter.meter) + " used of the limit",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(percent),
      "aria-valuetext": label + " (" + meter.used_percent + "%)",
    }, fill);
  }

  function chart(meter, series) {
    const buckets = series ? series.buckets : [];
    const values = buckets.map((b) => Number(b.quantity));
    const top = Math.max(...values, 0);
    const name = words(meter.meter);
    const id = "chart-" + meter.meter;
    let busiest = null;
    buckets.forEach((b, i) => { if (values[i] > 0 && (busiest === null || values[i] > values[busiest])) busiest = i; });
    const summary = busiest === null
      ? "No " + name + " used yet this period."
      : "Daily " + name + ": " + series.used + " this period, most on " +
        new Date(buckets[busiest].start).toLocaleDateString(undefined, DAY) + " (" + buckets[busiest].quantity + ").";
    const width = Math.max(buckets.length, 1) * 10;
    const picture = svg("svg", { viewBox: "0 0 " + width + " 100", preserveAspectRatio: "none", class: "chart", role: "img", "aria-labelledby": id });
    buckets.forEach((b, i) => {
      const height = top > 0 ? Math.max((values[i] / top) * 96, values[i] > 0 ? 2 : 0) : 0;
      const future = clock && new Date(b.start) > clock;
      const bar = svg("rect", { x: i * 10 + 1.5, y: 100 - height, width: 7, height: height, class: future ? "future" : "day" },
        svg("title", {}, new Date(b.start).toLocaleDateString(undefined, DAY) + ": " + b.quantity));
      picture.append(bar, svg("rect", { x: i * 10 + 1.5, y: 99, width: 7, height: 1, class: "base" }));
    });
    const rows = buckets.filter((b, i) => values[i] > 0).map((b) =>
      el("tr", {}, el("th", { scope: "row" }, date(b.start, DAY)), el("td", { class: "num" }, b.quantity)));
    const table = el("table", { class: "daily" },
      el("caption", {}, name + " per day"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Day"), el("th", { scope: "col", class: "num" }, "Used"))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: "2" }, "Nothing used yet."))));
    return el("figure", { class: "chart-box" },
      picture,
      el("div", { class: "axis", "aria-hidden": "true" },
        buckets.length ? [date(buckets[0].start, DAY), date(buckets[buckets.length - 1].start, DAY)] : []),
      el("figcaption", { id: id }, summary),
      el("details", {}, el("summary", {}, "Daily numbers"), table));
  }

  function renderUsage(account, usage) {
    const series = new Map((usage ? usage.meters : []).map((m) => [m.meter, m]));
    // meters with a limit first: they are what a customer watches
    const meters = [...account.meters].sort((x, y) => (x.limit === null) - (y.limit === null));
    const cards = meters.map((meter) => {
      const limited = meter.limit !== null;
      return el("article", { class: "meter", "data-meter": meter.meter },
        el("div", { class: "meter-head" },
          el("h3", {}, words(meter.meter)),
          el("p", { class: "meter-numbers" },
            el("span", { class: "used" }, meter.used),
            limited ? [" of ", el("span", { class: "limit" }, meter.limit)] : " used",
            limited ? el("span", { class: "percent" }, " · " + meter.used_percent + "%") : el("span", { class: "muted" }, " · no limit"))),
        limited ? progress(meter) : null,
        limited && meter.enforcement === "hard" ? el("p", { class: "note" }, "Use beyond " + meter.limit + " is refused until the period ends.") : null,
        chart(meter, series.get(meter.meter)));
    });
    $("usage").replaceChildren(...(cards.length ? cards : [el("p", { class: "note" }, "No metered usage on this plan.")]));
  }

  function renderUpcoming(upcoming) {
    const lines = upcoming.lines.map((line) =>
      el("tr", {}, el("th", { scope: "row" }, line.description), el("td", { class: "num" }, money(line.amount, upcoming.currency))));
    const foot = [["Subtotal", upcoming.subtotal]];
    if (Number(upcoming.credits_applied) !== 0) foot.push(["Credits applied", "−" + upcoming.credits_applied]);
    $("upcoming").replaceChildren(
      el("p", { class: "figure", id: "upcoming-total" }, money(upcoming.total, upcoming.currency)),
      el("p", { class: "note" }, "So far for ", span(upcoming.period), ". It grows with your usage until the period ends."),
      el("details", {}, el("summary", {}, "What it is made of"),
        el("table", { class: "lines" },
          el("caption", {}, "Upcoming invoice lines"),
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Item"), el("th", { scope: "col", class: "num" }, "Amount"))),
          el("tbody", {}, lines),
          el("tfoot", {}, foot.map(([what, amount]) =>
            el("tr", {}, el("th", { scope: "row" }, what), el("td", { class: "num" }, money(amount, upcoming.currency))))))));
  }

  function renderCredits(credits) {
    const live = credits.grants.filter((g) => Number(g.remaining) > 0 && (!g.expires_at || new Date(g.expires_at) > clock));
    const rows = live.map((g) =>
      el("tr", { "data-grant": String(g.grant_id) },
        el("th", { scope: "row", "data-label": "Grant" }, g.note || g.source),
        el("td", { class: "num remaining", "data-label": "Left" }, g.remaining),
        el("td", { class: "expires", "data-label": "Expires" }, g.expires_at ? date(g.expires_at) : "never")));
    $("credits").replaceChildren(
      el("p", { class: "figure", id: "credit-balance" }, credits.balance, el("span", { class: "unit" }, " credits")),
      live.length
        ? el("table", { class: "grants stack" },
          el("caption", {}, "Credits left, by grant"),
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Grant"), el("th", { scope: "col", class: "num" }, "Left"), el("th", { scope: "col" }, "Expires"))),
          el("tbody", {}, rows))
        : el("p", { class: "note" }, "No credits left."));
  }

  async function openPdf(event) {
    event.preventDefault();
    const link = event.currentTarget;
    const status = link.parentElement.querySelector(".pdf-status");
    const opened = window.open("", "_blank");
    status.textContent = "Opening…";
    try {
      const response = await fetch(link.href, { headers: { Authorization: "Bearer " + token }, cache: "no-store", credentials: "omit" });
      if (!response.ok) throw new ApiError(response.status, null);
      const url = URL.createObjectURL(await response.blob());
      if (opened) opened.location.href = url;
      else Object.assign(document.createElement("a"), { href: url, download: link.dataset.invoice + ".pdf" }).click();
      status.textContent = "";
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      if (opened) opened.close();
      status.textContent = problemKind(error) === "expired" ? "Link expired" : "PDF not available";
    }
  }

  function invoiceRow(invoice) {
    const pdf = el("a", { href: new URL("v1/invoices/" + encodeURIComponent(invoice.id) + "/pdf", location.href).pathname, class: "pdf", "data-invoice": invoice.id },
      "PDF", el("span", { class: "visually-hidden" }, " of invoice " + invoice.id));
    pdf.addEventListener("click", openPdf);
    return el("tr", { "data-invoice": invoice.id },
      el("th", { scope: "row", "data-label": "Period" }, span(invoice.period)),
      el("td", { "data-label": "Invoice" }, el("span", { class: "id" }, invoice.id)),
      el("td", { "data-label": "Status" }, el("span", { class: "badge " + invoice.status }, invoice.status)),
      el("td", { "data-label": "Total", class: "num" }, money(invoice.total, invoice.currency)),
      el("td", { "data-label": "Document" }, el("span", {}, pdf, el("span", { class: "pdf-status", role: "status" }))));
  }

  async function renderInvoices(page) {
    const box = $("invoices");
    if (!page.invoices.length) {
      box.replaceChildren(el("p", { class: "note" }, "No invoices yet: the first comes when this period ends."));
      return;
    }
    let body = box.querySelector("tbody");
    if (!body) {
      body = el("tbody");
      box.replaceChildren(el("table", { class: "invoices stack" },
        el("caption", { class: "visually-hidden" }, "Invoices, newest first"),
        el("thead", {}, el("tr", {}, ["Period", "Invoice", "Status", "Total", "Document"].map((h) =>
          el("th", { scope: "col", class: h === "Total" ? "num" : null }, h)))),
        body));
    }
    body.append(...page.invoices.map(invoiceRow));
    box.querySelector(".more")?.remove();
    if (page.next_cursor) {
      const more = el("button", { type: "button", class: "button more" }, "Show older invoices");
      more.addEventListener("click", async () => {
        more.disabled = true;
        try {
          await renderInvoices(await api(invoicesPath(page.next_cursor)));
        } catch (error) {
          more.disabled = false;
          more.textContent = "Could not load more — try again";
        }
      });
      box.append(more);
    }
  }

  function invoicesPath(cursor) {
    return accountPath("/invoices?limit=" + INVOICES_PER_PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
  }

  let account = null;
  function accountPath(rest) {
    return "v1/accounts/" + encodeURIComponent(account) + rest;
  }

  async function section(container, load, render) {
    try {
      render(await load);
    } catch (error) {
      sectionFailed(container, error);
    }
  }

  async function start() {
    delete document.body.dataset.state;
    $("problem").hidden = true;
    $("loading").hidden = false;
    token = token || takeToken();
    if (!token) return showProblem("missing", false);
    let me;
    try {
      me = await api("v1/portal/me");
    } catch (error) {
      const kind = problemKind(error);
      return showProblem(kind, kind === "unreachable" || kind === "failed");
    }
    account = me.account;
    clock = new Date(me.now);
    $("account-id").textContent = account;
    $("account-line").hidden = false;
    const usage = api(accountPath("/usage?granularity=day")).catch(() => null);
    let summary;
    try {
      summary = await api(accountPath(""));
    } catch (error) {
      const kind = problemKind(error);
      return showProblem(kind, kind === "unreachable" || kind === "failed");
    }
    renderPlan(summary);
    renderUsage(summary, await usage);
    $("loading").hidden = true;
    $("content").hidden = false;
    $("as-of").replaceChildren("As of ", el("time", { datetime: me.now }, new Date(me.now).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" }) + " UTC"), ".");
    await Promise.all([
      section($("upcoming"), api(accountPath("/invoices/upcoming")), renderUpcoming),
      section($("credits"), api(accountPath("/credits")), renderCredits),
      section($("invoices"), api(invoicesPath(null)), renderInvoices),
    ]);
    document.body.dataset.state = "ready";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("retry").addEventListener("click", start);
    start();
  });
})();
