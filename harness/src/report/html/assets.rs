//! The page's inline style and script: no URL of any kind, so it opens from a zip or `file://`.

/// The page's whole style sheet.
pub(super) const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2329;margin:0 24px 40px;max-width:1280px}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde}
h2 small{font-weight:normal;color:#667;font-size:13px}h3{font-size:15px;margin:14px 0 4px}
header p{margin:3px 0}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f5f5f7;padding:6px 10px;white-space:pre-wrap;max-height:20em;overflow:auto}
.badge{padding:1px 8px;border-radius:4px;color:#fff;font-size:16px}
.badge.passed{background:#2e7d32}.badge.failed{background:#c62828}.badge.aborted{background:#6a1b9a}
p.warning{color:#a15c00;font-weight:bold}p.starved{color:#b71c1c;font-weight:bold}p.abort-reason{color:#6a1b9a;font-weight:bold}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
th{font-weight:600;color:#445}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.passed .result{color:#2e7d32}tr.flaky .result{color:#b26a00}tr.failed .result,tr.error .result{color:#c62828;font-weight:bold}
tr.not-run .result{color:#888}tr.current{background:#e8f0fe;font-weight:600}td.slower{color:#c62828;font-weight:bold}
tr.near{background:#fff4e0}tr.over{background:#fde2e2}tr.failed td:nth-child(2){color:#c62828}
.bar{display:inline-block;width:120px;height:9px;background:#e6e8eb;vertical-align:middle;border-radius:2px}
.bar span{display:block;height:100%;background:#5b8def;border-radius:2px}
tr.near .bar span{background:#ef9a00}tr.over .bar span{background:#c62828}
.failure{border-left:3px solid #c62828;padding-left:10px;margin:8px 0}.failure p{margin:2px 0}
svg.timeline{display:block;font-size:11px;background:#fff}
svg text{fill:#1d2329}text.lane-label{text-anchor:end;font-size:12px}text.tick{text-anchor:middle;fill:#667}
line.tick{stroke:#e3e5e8}text.in-bar{pointer-events:none}
rect.phase{fill:#e4e9f2;stroke:#fff}rect.phase.build{fill:#d9d2ea}rect.phase.boot{fill:#cfe0f3}
rect.phase.readiness{fill:#d4ecd9}rect.phase.scenario{fill:#f3e8c9}rect.phase.teardown{fill:#e0e0e0}
rect.scenario{stroke:#fff}rect.scenario.passed{fill:#a5d6a7}rect.scenario.failed{fill:#ef9a9a}
rect.scenario.error{fill:#ffcc80}rect.scenario.unfinished{fill:#cfd8dc}
rect.attempt{opacity:.18}rect.attempt.passed{fill:#66bb6a}rect.attempt.failed{fill:#e53935}
rect.attempt.error{fill:#fb8c00}rect.attempt.unfinished{fill:#90a4ae}
rect.state.booting{fill:#ffe082}rect.state.up{fill:#81c784}rect.state.off{fill:#cfd8dc}
rect.fault{fill:url(#hatch);stroke:#b71c1c;stroke-width:1}rect.hatch{fill:#e53935;opacity:.45}
rect.fault.instant{fill:#b71c1c}text.fault-label{fill:#7f0000;font-weight:600;pointer-events:none}
g.check rect{stroke-width:1}g.check.passed rect{fill:#c8e6c9;stroke:#2e7d32}
g.check.failed rect{fill:#ef5350;stroke:#8e0000;stroke-width:1.5}g.check.failed text{fill:#fff;font-weight:600}
g.check.running rect{fill:#eceff1;stroke:#78909c;stroke-dasharray:3 2}
polygon.cpu{fill:#5b8def;fill-opacity:.45;stroke:#1565c0;stroke-width:1}rect.cpu-frame{fill:#f5f7fb;stroke:#e3e5e8}
text.lane-label.cpu{font-size:10px;fill:#667}.k.cpu{background:#9db9f0}
line.measured{stroke:#1565c0;stroke-width:2}circle.since{fill:#1565c0}
#cursor-line{stroke:#1565c0;stroke-width:1;pointer-events:none}#cursor{color:#445;font-size:12px;min-height:1.4em}
.legend{font-size:12px;color:#445}.k{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
.k.booting{background:#ffe082}.k.up{background:#81c784}.k.off{background:#cfd8dc}.k.fault{background:#e57373}
.k.passed{background:#c8e6c9;border:1px solid #2e7d32}.k.failed{background:#ef5350}.k.running{background:#eceff1;border:1px dashed #78909c}
svg.spark polyline{fill:none;stroke:#5b8def;stroke-width:1.5}svg.spark circle.run{fill:#5b8def}svg.spark circle.current{fill:#c62828}
";

/// Shows the run time under the pointer; the page is complete without it.
pub(super) const SCRIPT: &str = "
(function(){var svg=document.querySelector('svg.timeline');if(!svg)return;
var out=document.createElement('div');out.id='cursor';out.textContent='point at the timeline to read the time';
svg.parentNode.insertBefore(out,svg.nextSibling);var line=document.getElementById('cursor-line');
var x0=+svg.dataset.x0,plot=+svg.dataset.plot,end=+svg.dataset.end;
svg.addEventListener('mousemove',function(e){var p=svg.createSVGPoint();p.x=e.clientX;p.y=e.clientY;
var q=p.matrixTransform(svg.getScreenCTM().inverse());var t=(q.x-x0)/plot*end;
if(t<0||t>end){line.setAttribute('visibility','hidden');return;}
line.setAttribute('x1',q.x);line.setAttribute('x2',q.x);line.setAttribute('visibility','visible');
out.textContent='t = '+t.toFixed(1)+' s since the run started';});})();
";
