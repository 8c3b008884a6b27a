//! `shoal demo`: the cold-chain story in one command. Starts `shoal serve` on the embedded store
//! (a child process, its own data directory), creates the rules (every telemetry reading to the
//! archive; alerts through the `cold-chain-alerts` plugin when its component is found, else a
//! plain SQL rule), then starts the truck simulator (`shoal-coldchain`, built next to `shoal`),
//! which registers the fleet (things, a thing type and group, a certificate and a
//! least-privilege policy per truck) and drives the trucks over mutual TLS. Prints where to
//! look, and stops everything on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

use crate::cli::{self, Api, Endpoint};

/// `shoal demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many trucks.
    #[arg(long, default_value_t = 10)]
    pub trucks: u32,
    /// Simulated seconds between a truck's readings (its shadow's `desired.interval` changes it).
    #[arg(long, default_value_t = 10.0)]
    pub interval: f64,
    /// Simulated seconds per real second: at 60, a minute of watching is an hour of driving, and
    /// readings carry simulated time (`ts` runs ahead of the clock).
    #[arg(long, default_value_t = 60.0)]
    pub time_scale: f64,
    /// Seed of the routes and scripted incidents.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Share of trucks that get an incident (0 to 1).
    #[arg(long, default_value_t = 0.4)]
    pub incident_rate: f64,
    /// Data directory of the demo's shoal (created; reused by a second run).
    #[arg(long, default_value = "./shoal-demo-data")]
    pub data_dir: PathBuf,
    /// HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: String,
    /// MQTT over TLS listener (mutual TLS, the trucks' certificates).
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub mqtts_listen: String,
    /// Plain MQTT listener (for watching with any MQTT client).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: String,
    /// Where the plugin components are (`cold-chain-alerts.wasm`); default: `plugins/dist`
    /// under the current directory or above the `shoal` binary.
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Also POST every alert (raised and recovered, the JSON of `fleet/+/alerts`) to this URL
    /// (`http://host:port/path`), through a rule's webhook action.
    #[arg(long)]
    pub alert_webhook: Option<String>,
    /// Also email every raised alert to this address (needs `--smtp-relay`).
    #[arg(long, requires = "smtp_relay")]
    pub alert_email: Option<String>,
    /// SMTP relay for the alert emails, `host:port` (plain SMTP; a local receiver such as
    /// `python3 -m aiosmtpd -n -l 127.0.0.1:2525`).
    #[arg(long)]
    pub smtp_relay: Option<String>,
    /// Sender of the alert emails.
    #[arg(long, default_value = "shoal-demo@localhost")]
    pub smtp_from: String,
    /// Serve the dashboard from this directory instead of the copy built into shoal (for
    /// working on the page).
    #[arg(long)]
    pub dashboard_dir: Option<PathBuf>,
}

/// Children stopped when the demo ends, however it ends, in order: each with its signal.
struct Children(Vec<(&'static str, Child, &'static str)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, child, signal) in &mut self.0 {
            // The signal first (the simulator's trucks disconnect cleanly on SIGINT, so the
            // demo's end raises no connectivity alerts; shoal flushes its store on SIGTERM);
            // then make sure.
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("shoal demo: {name} did not stop, killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

fn find_plugin(args: &DemoArgs) -> Option<PathBuf> {
    let name = "cold-chain-alerts.wasm";
    if let Some(dir) = &args.plugins_dir {
        return Some(dir.join(name)).filter(|p| p.is_file());
    }
    let mut candidates = vec![PathBuf::from("plugins/dist").join(name)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/shoal -> the repository's plugins/dist.
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("plugins/dist").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn wait_for_ports(data: &Path, serve: &mut Child) -> Result<Value, String> {
    let path = data.join("ports.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return Ok(v);
        }
        if let Ok(Some(status)) = serve.try_wait() {
            return Err(format!(
                "shoal serve exited ({status}); see {}",
                data.join("shoal.log").display()
            ));
        }
        if Instant::now() > deadline {
            return Err("shoal serve did not start within 30 s".into());
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// Runs `shoal demo`.
pub fn demo(args: DemoArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: DemoArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the shoal binary: {e}"))?;
    let sim = sibling("shoal-coldchain").ok_or_else(|| {
        format!(
            "the truck simulator `shoal-coldchain` is not next to {}: build it with \
             `cargo build --release -p shoal-server -p shoal-coldchain`",
            exe.display()
        )
    })?;
    let data = &args.data_dir;
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let _ = std::fs::remove_file(data.join("ports.json"));
    let log = std::fs::File::create(data.join("shoal.log"))
        .map_err(|e| format!("cannot write {}: {e}", data.join("shoal.log").display()))?;
    let mut serve = Command::new(&exe);
    serve
        .args(["serve", "--store", "embedded", "--data-dir"])
        .arg(data)
        .args(["--http-listen", &args.http_listen])
        .args(["--mqtts-listen", &args.mqtts_listen])
        .args(["--mqtt-listen", &args.mqtt_listen]);
    if let Some(dir) = &args.dashboard_dir {
        serve.arg("--dashboard-dir").arg(dir);
    }
    if let Some(relay) = &args.smtp_relay {
        serve.args(["--smtp-relay", relay, "--smtp-from", &args.smtp_from]);
    }
    let serve = serve
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start shoal serve: {e}"))?;
    let mut children = Children(vec![("shoal serve", serve, "TERM")]);
    let ports = wait_for_ports(data, &mut children.0[0].1)?;
    let port = |name: &str| {
        ports
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let http = format!("http://{}", port("http"));

    let ep = Endpoint {
        endpoint: http.clone(),
        credentials_file: Some(data.join("credentials")),
        profile: "default".into(),
        region: "us-east-1".into(),
        json: true,
        table: false,
        ca_file: None,
    };
    cli::init_credentials(&ep)?;
    let rt = cli::runtime().map_err(|_| "cannot start a runtime".to_string())?;
    let plugin = find_plugin(&args);
    let api = Api::new(&ep);
    let mut alerts = rt.block_on(setup(&api, plugin.as_deref(), args.time_scale))?;
    alerts.push_str(&rt.block_on(notify(&api, &args))?);

    let sim_child = Command::new(&sim)
        .args(["--http", &http])
        .args(["--mqtts", &port("mqtts")])
        .arg("--ca-file")
        .arg(data.join("tls").join("ca.pem"))
        .arg("--credentials-file")
        .arg(data.join("credentials"))
        .arg("--state-dir")
        .arg(data.join("trucks"))
        .args(["--trucks", &args.trucks.to_string()])
        .args(["--interval", &args.interval.to_string()])
        .args(["--time-scale", &args.time_scale.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--incident-rate", &args.incident_rate.to_string()])
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", sim.display()))?;
    children.0.insert(0, ("the simulator", sim_child, "INT"));

    let dashboard = dashboard_url(&http, &data.join("credentials"));
    cli::print_text(&format!(
        "\nShoal's cold-chain demo is running ({} trucks).\n\
         \n  dashboard     {dashboard}\
         \n  HTTP API      {http}   (signed with {})\
         \n  MQTT/TLS      {}   (the trucks, mutual TLS)\
         \n  MQTT          {}   (watch: mosquitto_sub -p {} -t 'fleet/#' -v)\
         \n  alerts        fleet/+/alerts ({alerts})\
         \n  archive       {}\
         \n  claims        SHOAL_DATA_DIR={} {} claim verify --thing truck-1 --from <time> --to <time> --endpoint {http}\
         \n  shoal log     {}\n\nCtrl-C stops the demo.\n",
        args.trucks,
        data.join("credentials").display(),
        port("mqtts"),
        port("mqtt"),
        port("mqtt").rsplit(':').next().unwrap_or_default(),
        data.join("archive/telemetry").display(),
        data.display(),
        exe.display(),
        data.join("shoal.log").display(),
    ));
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs(d));
    let stop = rt.block_on(async {
        let wait_children = async {
            loop {
                for (name, child, _) in &mut children.0 {
                    if let Ok(Some(status)) = child.try_wait() {
                        return format!("{name} exited ({status})");
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return "the demo's time is up".to_string();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            why = wait_children => why,
            _ = tokio::signal::ctrl_c() => "interrupted".to_string(),
        }
    });
    eprintln!("shoal demo: stopping ({stop})");
    drop(children);
    Ok(())
}

/// The dashboard's address, with the demo's access key in the fragment (which browsers never
/// send to a server; the page keeps it in the tab's session storage).
fn dashboard_url(http: &str, credentials: &Path) -> String {
    let page = format!("{http}/dashboard/");
    let Some((id, secret)) = std::fs::read_to_string(credentials)
        .ok()
        .and_then(|text| shoal_auth::sigv4::credentials_in(&text, "default"))
    else {
        return page;
    };
    format!(
        "{page}#key={}&secret={}",
        fragment_encode(&id),
        fragment_encode(&secret)
    )
}

/// Percent-encodes all but unreserved characters.
fn fragment_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Creates `rule` or replaces what an earlier run left under that name.
async fn put_rule(api: &Api, name: &str, sql: &str, actions: Value, description: &str) -> Result<(), String> {
    let body = json!({ "sql": sql, "awsIotSqlVersion": "2016-03-23", "actions": actions, "description": description });
    match api.post(&format!("/rules/{name}"), body.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if e.contains("exists") => api.put(&format!("/rules/{name}"), body).await.map(|_| ()),
        Err(e) => Err(format!("creating rule {name}: {e}")),
    }
}

/// The rules that send alerts out by webhook and email, when asked for; what they do, for
/// the banner.
async fn notify(api: &Api, args: &DemoArgs) -> Result<String, String> {
    let mut said = String::new();
    if let Some(url) = &args.alert_webhook {
        put_rule(
            api,
            "cold_chain_webhook",
            "SELECT * FROM 'fleet/+/alerts'",
            json!([{ "webhook": { "url": url, "timeoutMs": 5000, "retries": 3 } }]),
            "every alert and recovery, POSTed as JSON",
        )
        .await?;
        said.push_str(&format!(", webhook {url}"));
    }
    if let Some(to) = &args.alert_email {
        put_rule(
            api,
            "cold_chain_email",
            "SELECT * FROM 'fleet/+/alerts' WHERE state = 'raised'",
            json!([{ "email": {
                "to": [to],
                "subject": "Cold chain alert: ${truck} ${kind}",
                "body": "Truck ${truck} raised a ${kind} alert (value ${value}, limit ${limit}) at ${ts} ms, position ${lat}, ${lon}.",
            } }]),
            "every raised alert, by email",
        )
        .await?;
        said.push_str(&format!(", email to {to}"));
    }
    Ok(said)
}

/// The demo's rules (and plugin): what the alerts come from, for the banner.
async fn setup(api: &Api, plugin: Option<&Path>, time_scale: f64) -> Result<String, String> {
    put_rule(
        api,
        "telemetry",
        "SELECT * FROM 'fleet/+/telemetry'",
        json!([{ "archive": {} }]),
        "every reading to DATA/archive/telemetry (claims read it)",
    )
    .await?;
    let Some(wasm) = plugin else {
        put_rule(
            api,
            "cold_chain_alerts",
            "SELECT topic(2) AS truck, 'temperature' AS kind, 'raised' AS state, tempC AS value, -18 AS limit, ts, lat, lon \
             FROM 'fleet/+/telemetry' WHERE tempC > -18",
            json!([{ "republish": { "topic": "fleet/${topic(2)}/alerts", "qos": 1 } }]),
            "temperature above -18 °C (SQL fallback: the cold-chain-alerts plugin was not found)",
        )
        .await?;
        return Ok("SQL rule; build plugins/ with plugins/build.sh for the debounced plugin alerts".into());
    };
    let bytes = std::fs::read(wasm).map_err(|e| format!("reading {}: {e}", wasm.display()))?;
    // Each reading costs the plugin two shadow reads and a key-value read and write: on a busy
    // two-core machine (a debug build, a thousand trucks) the default 10 ms deadline is tight.
    // Silence: a truck that stays connected but sends nothing for 3 of its reporting intervals
    // (its shadow's `interval`, simulated seconds, so scaled by the time scale) raises the
    // connectivity alert, through a watchdog the plugin re-arms with every reading.
    let config = json!({
        "deadline_ms": 100,
        "max_consecutive_failures": 50,
        "settings": [["silence_intervals", "3"], ["time_scale", time_scale.to_string()]],
    })
    .to_string();
    let url = api.url(
        "/plugins/cold-chain-alerts/versions",
        &["activate=true".into(), format!("config={}", cli::encode(&config))],
    );
    cli::send(
        api.http
            .post(url)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
    .map_err(|e| format!("deploying {}: {e}", wasm.display()))?;
    put_rule(
        api,
        "cold_chain_alerts",
        "SELECT * FROM 'fleet/+/telemetry'",
        json!([{ "plugin": { "name": "cold-chain-alerts" } }]),
        "debounced excursions, door open while moving, presence, corridor (plugin cold-chain-alerts)",
    )
    .await?;
    put_rule(
        api,
        "cold_chain_connectivity",
        "SELECT * FROM '$aws/events/presence/+/+' WHERE startswith(clientId, 'truck-')",
        json!([{ "plugin": { "name": "cold-chain-alerts" } }]),
        "trucks whose connection is lost, and back (lifecycle events, plugin cold-chain-alerts)",
    )
    .await?;
    put_rule(
        api,
        "cold_chain_silence",
        "SELECT * FROM 'fleet/+/silence'",
        json!([{ "plugin": { "name": "cold-chain-alerts" } }]),
        "trucks connected but silent for 3 reporting intervals (watchdogs the plugin arms)",
    )
    .await?;
    Ok(format!("plugin cold-chain-alerts from {}", wasm.display()))
}
