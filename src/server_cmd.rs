//! `isthmus server --config FILE`: load the configuration (TOML file,
//! overridden by `ISTHMUS_*` environment variables), start the node, and
//! serve until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use isthmus_core::config::NodeConfig;
use isthmus_core::node::NodeTuning;
use isthmus_server::Plugins;

/// Arguments of `isthmus server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The node's TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

/// Load a node configuration: the file, then `ISTHMUS_*` variables on top
/// (`ISTHMUS_LISTEN=127.0.0.1:7402`, nested keys with `__`:
/// `ISTHMUS_KEYSPACES__CARTS__CONSISTENCY=ALL`). Unknown keys and invalid
/// values are errors that name the field.
pub fn load_config(path: &Path) -> anyhow::Result<NodeConfig> {
    if !path.exists() {
        anyhow::bail!("config file {} does not exist", path.display());
    }
    let config: NodeConfig = Figment::new()
        .merge(Toml::file(path))
        .merge(Env::prefixed("ISTHMUS_").split("__"))
        .extract()
        .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    config
        .validate()
        .with_context(|| format!("config {}", path.display()))?;
    Ok(config)
}

/// Run a node until it is told to stop.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    // Lifecycle events (started, ready, datacenters down and up, full
    // syncs, decommission) are logged at info.
    crate::init_logs(config.ops.log_format, "info");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.tuning.runtime.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.build().context("starting the async runtime")?;
    runtime.block_on(async move {
        // A wasm host whose merges follow the bindings of the cluster's
        // replicated registry, else the keyspaces' configured
        // `resolver = "NAME@VERSION"`; the cross-DC bridge.
        let plugins = Plugins::new(&config);
        if let Err(e) = &plugins.host {
            tracing::warn!(error = %e, "no wasm host; siblings will not be merged");
        }
        let node = plugins.start(config, NodeTuning::default()).await?;
        tracing::info!(addr = %node.addr, ops = node.ops_addr.as_deref().unwrap_or("off"), "serving");
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // figment's Jail API fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn files_and_environment_make_a_config_and_errors_name_the_field() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                r#"
                node_id = "n1"
                dc = "dc1"
                rack = "r1"
                listen = "127.0.0.1:7401"
                data_dir = "/tmp/isthmus-n1"
                seeds = ["127.0.0.1:7402"]

                [tls]
                ca = ["/etc/isthmus/ca.pem"]
                cert = "/etc/isthmus/n1.pem"
                key = "/etc/isthmus/n1.key"

                [keyspaces.carts]
                replication = { dc1 = 3 }
                resolver = "cart-union@1"
                "#,
            )?;
            let config = load_config(Path::new("node.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.vnodes, 64);
            assert_eq!(
                config.tls.as_ref().map(|t| t.cert.clone()),
                Some("/etc/isthmus/n1.pem".into())
            );

            assert_eq!(config.keyspaces["carts"].replication["dc1"], 3);

            jail.set_env("ISTHMUS_LISTEN", "127.0.0.1:9999");
            let config = load_config(Path::new("node.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.listen, "127.0.0.1:9999");

            jail.set_env("ISTHMUS_LISTEN", "nowhere");
            let err = load_config(Path::new("node.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("`listen`"), "{err:#}");

            jail.set_env("ISTHMUS_LISTEN", "127.0.0.1:9999");
            jail.create_file("typo.toml", "node_idd = \"n1\"\n")?;
            let err = load_config(Path::new("typo.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("node_idd"), "{err:#}");

            jail.create_file(
                "zero.toml",
                "node_id = \"n1\"\ndc = \"dc1\"\nrack = \"r\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\ninsecure_plaintext = true\n[keyspaces.k]\nreplication = { dc1 = 0 }\n",
            )?;
            let err = load_config(Path::new("zero.toml")).unwrap_err();
            assert!(
                format!("{err:#}").contains("keyspaces.k.replication.dc1"),
                "{err:#}"
            );

            // Without [tls], plaintext must be asked for by name.
            jail.create_file(
                "plain.toml",
                "node_id = \"n1\"\ndc = \"dc1\"\nrack = \"r\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n",
            )?;
            let err = load_config(Path::new("plain.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("`tls`"), "{err:#}");
            jail.set_env("ISTHMUS_INSECURE_PLAINTEXT", "true");
            assert!(load_config(Path::new("plain.toml")).is_ok());
            let err = load_config(Path::new("node.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("insecure_plaintext"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_ops_table_loads_from_file_and_environment_and_errors_name_the_field() {
        figment::Jail::expect_with(|jail| {
            let node = "node_id = \"n1\"\ndc = \"dc1\"\nrack = \"r\"\nlisten = \"127.0.0.1:7401\"\ndata_dir = \"/tmp/x\"\ninsecure_plaintext = true\n";
            jail.create_file("plain.toml", node)?;
            let config = load_config(Path::new("plain.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                config.ops.address(&config.listen).as_deref(),
                Some("127.0.0.1:9401")
            );
            assert_eq!(config.ops.log_format, isthmus_core::config::LogFormat::Text);
            assert_eq!(config.ops.auth, isthmus_core::config::OpsAuth::Login);

            jail.create_file(
                "ops.toml",
                &format!("{node}[ops]\nlisten = \"127.0.0.2:9500\"\nlog_format = \"json\"\n"),
            )?;
            let config = load_config(Path::new("ops.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.ops.listen.as_deref(), Some("127.0.0.2:9500"));
            assert_eq!(config.ops.log_format, isthmus_core::config::LogFormat::Json);

            jail.set_env("ISTHMUS_OPS__AUTH", "none");
            let config = load_config(Path::new("ops.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.ops.auth, isthmus_core::config::OpsAuth::None);
            jail.set_env("ISTHMUS_OPS__AUTH", "nobody");
            let err = load_config(Path::new("ops.toml")).unwrap_err();
            assert!(
                format!("{err:#}").to_lowercase().contains("ops.auth"),
                "{err:#}"
            );
            jail.set_env("ISTHMUS_OPS__AUTH", "login");

            jail.set_env("ISTHMUS_OPS__ENABLED", "false");
            let config = load_config(Path::new("ops.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.ops.address(&config.listen), None);

            jail.create_file("xml.toml", &format!("{node}[ops]\nlog_format = \"xml\"\n"))?;
            let err = load_config(Path::new("xml.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("log_format"), "{err:#}");

            jail.create_file("bad.toml", &format!("{node}[ops]\nlisten = \"nowhere\"\n"))?;
            let err = load_config(Path::new("bad.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("`ops.listen`"), "{err:#}");
            Ok(())
        });
    }

    /// The TOML of a ConfigMap manifest's `isthmus.toml: |` block.
    fn configmap_toml(yaml: &str) -> String {
        let mut lines = yaml
            .lines()
            .skip_while(|l| !l.trim().starts_with("isthmus.toml: |"));
        lines.next();
        lines
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `ISTHMUS_*` variables a StatefulSet manifest sets, with
    /// `$(POD_NAME)` filled in (a variable from a Secret gets `secret`).
    fn statefulset_env(yaml: &str, pod: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut lines = yaml.lines().map(str::trim).peekable();
        while let Some(line) = lines.next() {
            let Some(name) = line.strip_prefix("- name: ISTHMUS_") else {
                continue;
            };
            let value = match lines.peek().and_then(|l| l.strip_prefix("value: ")) {
                Some(v) => v.trim_matches('"').replace("$(POD_NAME)", pod),
                None => "secret".to_owned(),
            };
            env.push((format!("ISTHMUS_{name}"), value));
        }
        env
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_kubernetes_manifests_make_valid_node_configs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
        for dc in ["dc1", "dc2"] {
            let read = |f: &str| std::fs::read_to_string(root.join(dc).join(f)).unwrap();
            let toml = configmap_toml(&read("configmap.yaml"));
            let pod = format!("isthmus-{dc}-0");
            let env = statefulset_env(&read("statefulset.yaml"), &pod);
            assert!(env.len() >= 4, "{env:?}");
            figment::Jail::expect_with(|jail| {
                jail.create_file("isthmus.toml", &toml)?;
                for (name, value) in &env {
                    jail.set_env(name, value);
                }
                let config =
                    load_config(Path::new("isthmus.toml")).map_err(|e| format!("{dc}: {e:#}"))?;
                assert_eq!(config.dc, dc);
                assert_eq!(config.node_id, pod);
                assert_eq!(config.listen, "0.0.0.0:7401");
                assert_eq!(
                    config.advertise.as_deref(),
                    Some(
                        format!("{pod}.isthmus-{dc}.isthmus.svc.{dc}.isthmus.internal:7401")
                            .as_str()
                    )
                );
                assert_eq!(
                    config.tls.as_ref().map(|t| t.cert.clone()),
                    Some(format!("/etc/isthmus/tls/{pod}.pem").into())
                );
                // A pod on a new volume decides for itself.
                assert_eq!(config.bootstrap, None);
                assert_eq!(
                    config.ops.address(&config.listen).as_deref(),
                    Some("0.0.0.0:9401")
                );
                assert!(config.seeds.len() >= 4);
                Ok(())
            });
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn tuning_and_advertise_load_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            let node = "node_id = \"n1\"\ndc = \"dc1\"\nrack = \"r\"\nlisten = \"0.0.0.0:7401\"\ndata_dir = \"/tmp/x\"\ninsecure_plaintext = true\n";
            jail.create_file("wild.toml", node)?;
            let err = load_config(Path::new("wild.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("`advertise`"), "{err:#}");
            jail.set_env("ISTHMUS_ADVERTISE", "n1.isthmus.example:7401");
            jail.create_file(
                "tuned.toml",
                &format!("{node}[tuning.gossip]\ninterval_ms = 250\n[tuning.resolvers]\ncompile_threads = 2\n[tuning.runtime]\nworker_threads = 1\n"),
            )?;
            let config = load_config(Path::new("tuned.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.advertise.as_deref(), Some("n1.isthmus.example:7401"));
            assert_eq!(config.tuning.gossip.interval_ms, Some(250));
            assert_eq!(config.tuning.resolvers.compile_threads, Some(2));
            assert_eq!(config.tuning.runtime.worker_threads, Some(1));
            let limits = isthmus_server::resolver_limits(
                &config.tuning.resolvers,
                isthmus_resolvers::ResolverLimits::default(),
            );
            assert_eq!(limits.compile_threads, 2);
            jail.set_env("ISTHMUS_TUNING__REPAIR__INTERVAL_MS", "3600000");
            let config = load_config(Path::new("tuned.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.tuning.repair.interval_ms, Some(3_600_000));
            jail.set_env("ISTHMUS_TUNING__GOSSIP__INTERVAL_MS", "0");
            let err = load_config(Path::new("tuned.toml")).unwrap_err();
            assert!(
                format!("{err:#}").contains("`tuning.gossip.interval_ms`"),
                "{err:#}"
            );
            jail.set_env("ISTHMUS_TUNING__GOSSIP__INTERVAL_MS", "250");
            jail.set_env("ISTHMUS_TUNING__GOSSIP__INTERVALL_MS", "250");
            let err = load_config(Path::new("tuned.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("intervall_ms"), "{err:#}");
            Ok(())
        });
    }
}
