// Say so when the previous attempt was refused (/login?failed=1).
if (new URLSearchParams(location.search).has("failed")) document.getElementById("failed").hidden = false;
