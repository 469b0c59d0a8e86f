// Keeps the database status on the dashboard live while it is being provisioned.
(function () {
  "use strict";
  const card = document.getElementById("database-card");
  if (!card) return;
  const statusEl = document.getElementById("database-status");
  const facts = document.getElementById("database-facts");
  const errorEl = document.getElementById("database-error");
  const retry = document.getElementById("database-retry");
  let delay = 1000;

  function render(data) {
    statusEl.textContent = data.label;
    statusEl.className = "status status-" + data.status;
    facts.hidden = data.status !== "ready";
    for (const el of facts.querySelectorAll("[data-fact]")) {
      el.textContent = data[el.dataset.fact] || "";
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
