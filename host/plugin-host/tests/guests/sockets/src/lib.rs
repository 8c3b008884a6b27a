//! A plugin that tries to open a TCP connection; linking `std::net` on wasm32-wasip2 makes the
//! component import `wasi:sockets/*`, so the host must refuse it at upload.

wit_bindgen::generate!({ world: "rule-plugin", path: "../../../../../wit/deps/shoal-plugin-0.1.0" });

struct Sockets;

impl Guest for Sockets {
    fn init(_config: Vec<(String, String)>) -> Result<(), PluginError> {
        Ok(())
    }

    fn on_message(msg: Message) -> Result<Vec<Action>, PluginError> {
        let addr = String::from_utf8_lossy(&msg.payload).into_owned();
        match std::net::TcpStream::connect(addr.as_str()) {
            Ok(_) => Err(PluginError::Failed(format!("connected to {addr}"))),
            Err(e) => Err(PluginError::Rejected(format!("connect {addr}: {e}"))),
        }
    }
}

export!(Sockets);
