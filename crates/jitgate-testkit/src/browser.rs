//! Real headless Chromium over WebDriver, for the portal's browser tests.
//!
//! [`Browser::start`] runs Debian's `chromedriver` on a free loopback port in its own process
//! group, with a temporary profile directory, and opens one WebDriver session on a 1366×768
//! headless Chromium that accepts the test server's self-signed certificate. Dropping the guard
//! kills the whole process group (chromedriver and every Chromium process it started) and
//! removes the profile, also when the test fails. [`Browser::axe`] runs axe-core (installed from
//! npm into `crates/jitgate/tests/browser/node_modules` by `.ci/run`) in the current page;
//! [`Browser::screenshot`] writes a PNG artefact.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Locator;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// Where the WebDriver binary and the browser are expected (Debian's packages).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long an element or a condition is waited for before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// axe-core's script, from the test's npm install.
pub fn axe_script() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../jitgate/tests/browser/node_modules/axe-core/axe.min.js");
    p.is_file().then_some(p)
}

/// Why the browser tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
        if !Path::new(path).is_file() {
            return Some(format!("needs {path} (apt-get install {package})"));
        }
    }
    if axe_script().is_none() {
        return Some("needs axe-core (npm ci --prefix crates/jitgate/tests/browser)".into());
    }
    None
}

/// One headless Chromium session, killed with its driver on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a session, or `None` (with the reason printed; under `CI=true`
    /// a panic) when the tools are missing.
    pub async fn start(test: &str) -> Option<Browser> {
        if let Some(why) = unavailable() {
            jitgate_netns::skip(test, &why);
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let profile = tempfile::tempdir().expect("profile dir");
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1366,768", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object"),
        };
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = driver.try_wait() {
                        let mut err = String::new();
                        if let Some(mut s) = driver.stderr.take() {
                            let _ = s.read_to_string(&mut err);
                        }
                        panic!("chromedriver exited ({status}): {err}");
                    }
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    kill_group(&mut driver);
                    panic!("no WebDriver session: {e}");
                }
            }
        };
        Some(Browser { client, driver, _profile: profile })
    }

    /// Opens `url` and waits until the document has loaded. A network error page (Chromium
    /// shows one when it sees interfaces change, as a test's namespaces do while it starts) is
    /// retried a few times before it fails the test.
    pub async fn goto(&self, url: &str) {
        for attempt in 0..5 {
            self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
            let uri = self.client.execute("return document.documentURI", vec![]).await.unwrap_or(Value::Null);
            if !uri.as_str().is_some_and(|u| u.starts_with("chrome-error:")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        panic!("open {url}: the browser shows a network error page");
    }

    /// Whether the browser shows its own network error page (say, after a form was posted while
    /// Chromium saw the namespace's interfaces change).
    pub async fn on_error_page(&self) -> bool {
        let uri = self.client.execute("return document.documentURI", vec![]).await.unwrap_or(Value::Null);
        uri.as_str().is_some_and(|u| u.starts_with("chrome-error:"))
    }

    /// Waits until the page has a control with this role and name (`Some`), or the browser shows
    /// its network error page (`None`).
    pub async fn control_or_error_page(&self, role: &str, name: &str) -> Option<fantoccini::elements::Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_control(role, name).await {
                return Some(e);
            }
            if self.on_error_page().await {
                return None;
            }
            if Instant::now() > deadline {
                let html = self.client.source().await.unwrap_or_default();
                panic!("no {role} named {name:?} on the page:\n{html}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element matching the CSS selector, waited for.
    pub async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no element {selector}: {e}"))
    }

    /// The control (button, link, tab, input) whose accessible name is `name`, waited for:
    /// found the way assistive technology finds it, by its visible label or `aria-label`.
    pub async fn control(&self, role: &str, name: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_control(role, name).await {
                return e;
            }
            if Instant::now() > deadline {
                let html = self.client.source().await.unwrap_or_default();
                panic!("no {role} named {name:?} on the page:\n{html}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The control with this role and accessible name, if the page has one now.
    pub async fn find_control(&self, role: &str, name: &str) -> Option<fantoccini::elements::Element> {
        let found = self
            .client
            .execute(FIND_CONTROL, vec![json!(role), json!(name)])
            .await
            .unwrap_or_else(|e| panic!("finding {role} {name:?}: {e}"));
        if found.is_null() {
            return None;
        }
        // A WebDriver element reference: {"element-6066-11e4-a52e-4f735466cecf": id}.
        let id = found.as_object()?.values().next()?.as_str()?.to_owned();
        Some(fantoccini::elements::Element::from_element_id(self.client.clone(), id.into()))
    }

    /// Waits until `script` (a function body returning a boolean) returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.client.execute(script, vec![]).await.unwrap_or(Value::Null);
            if v.as_bool() == Some(true) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        let v = self.client.execute("return document.body.innerText", vec![]).await.unwrap_or(Value::Null);
        v.as_str().unwrap_or_default().to_owned()
    }

    /// axe-core's serious and critical violations on the current page, as `id: help (targets)`.
    pub async fn axe(&self) -> Vec<String> {
        let script = std::fs::read_to_string(axe_script().expect("axe-core")).expect("axe.min.js");
        self.client.execute(&script, vec![]).await.expect("inject axe-core");
        let result = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations))
                    .catch(e => done([{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }]));",
                vec![],
            )
            .await
            .expect("axe.run");
        let mut out = Vec::new();
        for v in result.as_array().into_iter().flatten() {
            let impact = v["impact"].as_str().unwrap_or_default();
            if impact == "serious" || impact == "critical" {
                let targets: Vec<String> =
                    v["nodes"].as_array().into_iter().flatten().map(|n| n["target"].to_string()).collect();
                out.push(format!("{} ({impact}): {} at {}", v["id"], v["help"], targets.join(", ")));
            }
        }
        out
    }

    /// Writes a screenshot of the current page to `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the WebDriver session (the guard's drop kills the processes either way).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

fn kill_group(child: &mut Child) {
    // The driver leads its own process group: this ends it and every browser it started.
    if let Ok(pid) = i32::try_from(child.id()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    let _ = child.wait();
}

/// Finds an element by role and accessible name the way a screen reader would: the explicit
/// `role` attribute or the element's implicit role, and `aria-label`, `aria-labelledby`, the
/// `<label>` of an input, or the visible text. The name is the wanted words, or begins with
/// them as a whole word ("Revoke request 7" is a "Revoke" button: the visible label leads the
/// accessible name). Visible elements only.
const FIND_CONTROL: &str = r#"
const [role, name] = arguments;
const implicit = (e) => {
  const t = e.tagName.toLowerCase();
  if (t === 'button' || (t === 'input' && ['submit', 'button', 'reset'].includes(e.type))) return 'button';
  if (t === 'a' && e.hasAttribute('href')) return 'link';
  if (t === 'input' && e.type === 'checkbox') return 'checkbox';
  if (t === 'input' && e.type === 'radio') return 'radio';
  if (t === 'select') return 'combobox';
  if (t === 'input' && e.type === 'number') return 'spinbutton';
  if (t === 'textarea' || (t === 'input' && !['hidden', 'submit', 'button', 'reset', 'checkbox', 'radio', 'number'].includes(e.type))) return 'textbox';
  return null;
};
const accName = (e) => {
  if (e.getAttribute('aria-label')) return e.getAttribute('aria-label');
  const by = e.getAttribute('aria-labelledby');
  if (by) return by.split(/\s+/).map(id => (document.getElementById(id) || {}).textContent || '').join(' ');
  if (e.id) { const l = document.querySelector(`label[for="${CSS.escape(e.id)}"]`); if (l) return l.textContent; }
  const wrap = e.closest('label'); if (wrap) return wrap.textContent;
  if (e.tagName === 'INPUT' && e.value && ['submit', 'button'].includes(e.type)) return e.value;
  return e.textContent || '';
};
const norm = (s) => s.replace(/\s+/g, ' ').trim();
for (const e of document.querySelectorAll('*')) {
  const r = e.getAttribute('role') || implicit(e);
  if (r !== role) continue;
  const n = norm(accName(e));
  if (n !== name && !n.startsWith(name + ' ')) continue;
  const box = e.getBoundingClientRect();
  if (box.width === 0 && box.height === 0 && e.type !== 'checkbox' && e.type !== 'radio') continue;
  return e;
}
return null;
"#;
