// Keeps the database's status live while it is being set up: the notice on the documents page, the facts on the
// account page. Polls with back-off and stops once the database is settled.
(function () {
  "use strict";
  const card = document.getElementById("database-card");
  if (!card) return;
  const statusEl = document.getElementById("database-status");
  const messageEl = document.getElementById("database-message");
  const facts = document.getElementById("database-facts");
  const errorEl = document.getElementById("database-error");
  const retry = document.getElementById("database-retry");
  let delay = 1000;

  function render(data) {
    statusEl.textContent = data.label;
    statusEl.className = "status status-" + data.status;
    if (messageEl) {
      messageEl.textContent = data.busy
        ? "Your private database is being set up. You can upload now: your PDFs are processed as soon as it is ready."
        : data.status === "ready" ? "Your database is ready." : "Your database is not available.";
    }
    if (facts) {
      facts.hidden = data.status !== "ready";
      for (const el of facts.querySelectorAll("[data-fact]")) el.textContent = data[el.dataset.fact] || "";
    }
    errorEl.textContent = data.error || "";
    errorEl.hidden = !data.error;
    retry.hidden = !data.can_retry;
  }

  async function poll() {
    try {
      const response = await fetch(card.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        render(data);
        if (!data.busy) return;
      }
    } catch (error) {
      // Network hiccup: keep polling, a little slower.
    }
    delay = Math.min(delay * 1.5, 10000);
    setTimeout(poll, delay);
  }

  if (card.dataset.busy === "true") setTimeout(poll, delay);
})();
