//! The management plane: the member side of the management protocol ([`MgmtProtocol`], ALPN
//! [`crate::wire::MGMT_ALPN`]), served by every node for operators and remote applications.
//! The protocol itself is specified in [`crate::wire`].

mod server;

pub use server::{MgmtProtocol, RemoteReader};
