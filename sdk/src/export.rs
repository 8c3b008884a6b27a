//! What [`export_plugin!`](crate::export_plugin) expands to, and the glue it calls.
//!
//! The macro puts the plugin instance in a `thread_local!` of the plugin crate (a plain static
//! on wasm, which has one thread per instance), because only there is its type known. `init`
//! replaces it; `on-message` borrows it for the length of the call (host calls never re-enter
//! the guest, so the borrow cannot conflict).

#[cfg(target_arch = "wasm32")]
pub use wasm_glue::*;

/// Checks at compile time that the exported type implements [`Plugin`](crate::Plugin).
pub const fn assert_plugin<P: crate::Plugin>() {}

/// Exports a [`Plugin`](crate::Plugin) type as the component's `init` and `on-message`.
///
/// Use it once, in the plugin crate's `lib.rs`, after the `impl Plugin`:
///
/// ```ignore
/// shoal_sdk::export_plugin!(MyPlugin);
/// ```
///
/// On wasm32 (this build) it generates the component exports and keeps the instance built by
/// `init` for the following `on-message` calls. In native builds it only checks the type, so
/// the same crate unit-tests with `testing::Harness`.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // The generated exports are `unsafe extern "C"` functions: allow them even where the
        // plugin crate denies unsafe code (`forbid` cannot be overridden; use `deny`).
        #[allow(unsafe_code)]
        const _: () = {
            ::std::thread_local! {
                static SHOAL_PLUGIN_INSTANCE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct ShoalPluginExport;

            impl $crate::__private::Guest for ShoalPluginExport {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), $crate::__private::WitPluginError> {
                    SHOAL_PLUGIN_INSTANCE.with(|slot| $crate::__private::init::<$plugin>(slot, config))
                }

                fn on_message(
                    msg: $crate::__private::WitMessage,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::__private::WitAction>,
                    $crate::__private::WitPluginError,
                > {
                    SHOAL_PLUGIN_INSTANCE.with(|slot| $crate::__private::on_message::<$plugin>(slot, msg))
                }

                fn on_batch(
                    data: ::std::vec::Vec<u8>,
                    messages: ::std::vec::Vec<$crate::__private::WitHeader>,
                ) -> ::std::vec::Vec<$crate::__private::WitAnswer> {
                    SHOAL_PLUGIN_INSTANCE
                        .with(|slot| $crate::__private::on_batch::<$plugin>(slot, data, messages))
                }
            }

            $crate::__private::bindings::__export_rule_plugin!(
                ShoalPluginExport with_types_in $crate::__private::bindings
            );
        };
    };
}

/// Exports a [`Plugin`](crate::Plugin) type as the component's `init` and `on-message`.
///
/// Use it once, in the plugin crate's `lib.rs`, after the `impl Plugin`:
///
/// ```ignore
/// shoal_sdk::export_plugin!(MyPlugin);
/// ```
///
/// On wasm32 it generates the component exports and keeps the instance built by `init` for the
/// following `on-message` calls. In native builds (this one) it only checks the type, so the
/// same crate unit-tests with [`testing::Harness`](crate::testing::Harness).
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = $crate::__private::assert_plugin::<$plugin>();
    };
}

#[cfg(target_arch = "wasm32")]
mod wasm_glue {
    use std::cell::RefCell;

    pub use crate::sys::wasm::bindings;
    pub use crate::sys::wasm::bindings::Guest;
    use crate::sys::wasm::bindings::shoal::plugin0_1_0::types as wit;
    pub use crate::sys::wasm::bindings::shoal::plugin0_2_0::packed::Message as WitMessage;
    use crate::sys::wasm::bindings::shoal::plugin0_3_0::batch;
    pub use batch::Header as WitHeader;
    pub use wit::{Action as WitAction, PluginError as WitPluginError};

    use crate::{Action, Config, Message, Plugin, PluginError, Severity};

    /// `init`: builds a fresh instance (dropping any previous one first, so its memory is free
    /// for the new one).
    pub fn init<P: Plugin>(
        slot: &RefCell<Option<P>>,
        config: Vec<(String, String)>,
    ) -> Result<(), WitPluginError> {
        slot.replace(None);
        let plugin = P::init(Config::new(config)).map_err(to_wit_error)?;
        slot.replace(Some(plugin));
        Ok(())
    }

    /// `on-message`: calls the instance built by `init`.
    pub fn on_message<P: Plugin>(
        slot: &RefCell<Option<P>>,
        msg: WitMessage,
    ) -> Result<Vec<WitAction>, WitPluginError> {
        let mut slot = slot.borrow_mut();
        let Some(plugin) = slot.as_mut() else {
            return Err(WitPluginError::Failed(
                "on-message called before a successful init".into(),
            ));
        };
        let msg = Message::from_packed(
            msg.data,
            msg.topic_len,
            msg.payload_len,
            msg.client_id_len,
            msg.thing_name_len,
            msg.user_properties,
            msg.qos,
            msg.timestamp_ms,
        )
        .map_err(|e| WitPluginError::Failed(format!("the host passed a malformed message: {e}")))?;
        match plugin.on_message(&msg) {
            Ok(actions) => Ok(actions.into_iter().map(to_wit_action).collect()),
            Err(e) => Err(to_wit_error(e)),
        }
    }

    /// What the plugin answers for one message.
    pub type WitAnswer = Result<Vec<WitAction>, WitPluginError>;

    /// The answers of the `on-batch` call in progress not handed to the host yet, and
    /// whether the message being handled made a host call that changes something.
    struct Pending {
        answers: Vec<WitAnswer>,
        effects: bool,
    }

    thread_local! {
        static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
    }

    /// Hands the pending answers to the host (`batch.answer`).
    fn hand_over(answers: &mut Vec<WitAnswer>) {
        if answers.is_empty() {
            return;
        }
        // Borrowed bindings take references (no allocation for empty action lists).
        let refs: Vec<Vec<&WitAction>> = answers
            .iter()
            .map(|a| a.as_ref().map_or(Vec::new(), |v| v.iter().collect()))
            .collect();
        let borrowed: Vec<Result<&[&WitAction], &WitPluginError>> = answers
            .iter()
            .zip(&refs)
            .map(|(a, r)| match a {
                Ok(_) => Ok(r.as_slice()),
                Err(e) => Err(e),
            })
            .collect();
        batch::answer(&borrowed);
        answers.clear();
    }

    /// Called before every host call that changes something (log, key-value writes,
    /// metrics). Inside `on-batch`, the first such call of a message answers the messages
    /// before it, and the message itself is answered as soon as it is done: the host then
    /// knows, after a fault, which messages it may run again (see `wit/world.wit`).
    pub(crate) fn before_effect() {
        PENDING.with(|p| {
            if let Some(p) = p.borrow_mut().as_mut()
                && !p.effects
            {
                hand_over(&mut p.answers);
                p.effects = true;
            }
        });
    }

    /// `on-batch`: each message in turn, exactly as `on-message` would handle it; the
    /// answers go back in the return value, except around messages that change something
    /// ([`before_effect`]).
    pub fn on_batch<P: Plugin>(
        slot: &RefCell<Option<P>>,
        data: Vec<u8>,
        headers: Vec<WitHeader>,
    ) -> Vec<WitAnswer> {
        let mut slot = slot.borrow_mut();
        let n = headers.len();
        PENDING.with(|p| {
            p.replace(Some(Pending {
                answers: Vec::with_capacity(n),
                effects: false,
            }))
        });
        let headers = headers.into_iter().map(|h| crate::message::BatchHeader {
            topic_len: h.topic_len,
            payload_len: h.payload_len,
            client_id_len: h.client_id_len,
            thing_name_len: h.thing_name_len,
            user_properties: h.user_properties,
            user_properties_len: h.user_properties_len,
            qos: h.qos,
            timestamp_ms: h.timestamp_ms,
        });
        crate::message::for_each_in_batch(&data, headers, |msg| {
            let answer = match (slot.as_mut(), msg) {
                (None, _) => Err(WitPluginError::Failed(
                    "on-batch called before a successful init".into(),
                )),
                (Some(_), Err(e)) => Err(WitPluginError::Failed(format!(
                    "the host passed a malformed message: {e}"
                ))),
                (Some(plugin), Ok(msg)) => match plugin.on_message(msg) {
                    Ok(actions) => Ok(actions.into_iter().map(to_wit_action).collect::<Vec<_>>()),
                    Err(e) => Err(to_wit_error(e)),
                },
            };
            PENDING.with(|p| {
                if let Some(p) = p.borrow_mut().as_mut() {
                    p.answers.push(answer);
                    if p.effects {
                        hand_over(&mut p.answers);
                        p.effects = false;
                    }
                }
            });
        });
        PENDING.with(|p| p.take()).map(|p| p.answers).unwrap_or_default()
    }

    fn to_wit_error(e: PluginError) -> WitPluginError {
        match e {
            PluginError::Rejected(r) => WitPluginError::Rejected(r),
            PluginError::Config(r) => WitPluginError::Config(r),
            PluginError::Failed(r) => WitPluginError::Failed(r),
        }
    }

    fn to_wit_action(a: Action) -> WitAction {
        match a {
            Action::Publish(p) => WitAction::Publish(wit::Publish {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
            }),
            Action::ShadowUpdate(s) => WitAction::ShadowUpdate(wit::ShadowUpdate {
                thing: s.thing,
                shadow_name: s.shadow_name,
                document: s.document,
            }),
            Action::Alert(a) => WitAction::Alert(wit::Alert {
                severity: match a.severity {
                    Severity::Info => wit::Severity::Info,
                    Severity::Warning => wit::Severity::Warning,
                    Severity::Critical => wit::Severity::Critical,
                },
                title: a.title,
                body: a.body,
                thing: a.thing,
            }),
            Action::StreamAppend(s) => WitAction::StreamAppend(wit::StreamAppend {
                stream: s.stream,
                payload: s.payload,
            }),
            Action::Webhook(w) => WitAction::Webhook(wit::Webhook {
                target: w.target,
                body: w.body,
            }),
        }
    }
}
