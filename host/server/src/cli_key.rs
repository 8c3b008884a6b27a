//! `shoal key ...`: access keys that sign HTTP requests.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use crate::cli::{Api, Endpoint, finish, runtime};

/// `shoal key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key; its secret is printed once. Without `--admin` it may call the data plane
    /// only, as the policies attached to it allow (`shoal policy attach NAME KEY_ID`).
    Create {
        /// May call the management API too.
        #[arg(long)]
        admin: bool,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Also write the key to this file as an AWS credentials profile (mode 0600).
        #[arg(long)]
        save: Option<std::path::PathBuf>,
    },
    /// List keys (never their secrets).
    List,
    /// Show one key and its policies.
    Show {
        /// Access key id.
        id: String,
    },
    /// Let a key sign requests again.
    Activate {
        /// Access key id.
        id: String,
    },
    /// Refuse the key's signatures from the next request on.
    Deactivate {
        /// Access key id.
        id: String,
    },
    /// Delete a key and its policy attachments.
    Delete {
        /// Access key id.
        id: String,
    },
}

/// Runs `shoal key ...`.
pub fn key(ep: &Endpoint, cmd: KeyCmd) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let api = Api::new(ep);
    let profile = ep.profile.clone();
    finish(&rt, async move {
        match cmd {
            KeyCmd::Create {
                admin,
                description,
                save,
            } => {
                let v = api
                    .post("/keys", json!({ "admin": admin, "description": description }))
                    .await?;
                if let Some(path) = save {
                    let (Some(id), Some(secret)) = (v["accessKeyId"].as_str(), v["secretAccessKey"].as_str())
                    else {
                        return Err("the server's answer has no key".into());
                    };
                    let text =
                        format!("[{profile}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n");
                    shoal_auth::service::write_private(&path, &text)
                        .map_err(|e| format!("writing {}: {e}", path.display()))?;
                }
                Ok(v)
            }
            KeyCmd::List => api.get("/keys", &[]).await,
            KeyCmd::Show { id } => api.get(&format!("/keys/{}", crate::cli::encode(&id)), &[]).await,
            KeyCmd::Activate { id } => {
                api.put(
                    &format!("/keys/{}/status", crate::cli::encode(&id)),
                    json!({"status": "Active"}),
                )
                .await
            }
            KeyCmd::Deactivate { id } => {
                api.put(
                    &format!("/keys/{}/status", crate::cli::encode(&id)),
                    json!({"status": "Inactive"}),
                )
                .await
            }
            KeyCmd::Delete { id } => {
                api.delete(&format!("/keys/{}", crate::cli::encode(&id)), &[])
                    .await
            }
        }
    })
}
