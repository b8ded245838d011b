// Sign-in: POST /ui/login sets the session cookie, then the app loads.
"use strict";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target, err = document.getElementById("error");
  err.textContent = "";
  const body = { token: f.token.value.trim(), user: f.user.value.trim(), password: f.password.value };
  try {
    const r = await fetch("login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (r.ok) { location.replace("./#/overview"); return; }
    const j = await r.json().catch(() => ({}));
    err.textContent = j.message || ("sign-in failed (" + r.status + ")");
  } catch (e) {
    err.textContent = "the gateway did not answer: " + e.message;
  }
});
document.getElementById("token").focus();
