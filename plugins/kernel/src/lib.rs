//! Synchronous kernel operations shared by every twill plugin binary and the tests: network
//! namespaces, links (bridge, veth, vxlan, ifb), addresses, routes, policy rules, neighbours/FDB,
//! sysctls and traffic control (tbf, ingress, u32 redirect), over one NETLINK_ROUTE socket per
//! namespace, and the parsing of rtnetlink notifications ([`notify`]). No async runtime: plugins are
//! short-lived processes; a daemon calls these from its own loop.
//!
//! ```no_run
//! use twill_kernel::{Handle, NetNs, VethSpec};
//! # fn main() -> twill_kernel::Result<()> {
//! let pod = NetNs::open("/run/netns/pod")?;
//! let host = Handle::current()?;
//! let veth = host.create_veth(&VethSpec {
//!     name: twill_kernel::random_veth_name().expect("getrandom"),
//!     peer_name: "eth0".into(),
//!     peer_netns: Some(&pod),
//!     up: true,
//!     ..Default::default()
//! })?;
//! let container = Handle::in_netns(&pod)?;
//! container.add_address(veth.peer_index.unwrap(), "10.244.1.5/24".parse().unwrap())?;
//! # Ok(()) }
//! ```

pub mod address;
pub mod bridge_vlan;
pub mod error;
pub mod handle;
pub mod ifb;
pub mod link;
pub mod link_change;
pub mod link_move;
pub mod mac;
pub mod macvlan;
pub mod names;
pub mod neighbour;
pub mod netns;
pub mod nl;
pub mod notify;
pub mod route;
pub mod rule;
pub mod sysctl;
pub mod tc;
pub mod tuntap;
pub mod vxlan;

pub use address::{Address, AddressOptions, Family};
pub use bridge_vlan::{BridgeVlan, VlanOn};
pub use error::{Error, Result};
pub use handle::Handle;
pub use ifb::Ifb;
pub use link::{
    BridgePort, BridgePortFlags, BridgeSpec, Link, LinkChange, OperState, VethOptions, VethSpec,
};
pub use link_move::{LinkDetails, LinkRename};
pub use mac::MacAddr;
pub use macvlan::{MacvlanInfo, MacvlanMode, MacvlanSpec};
pub use names::random_veth_name;
pub use neighbour::{FdbEntry, Neighbour};
pub use netns::NetNs;
pub use route::{Route, RouteFilter, RouteProtocol, RouteScope, RouteType, TABLE_MAIN};
pub use rule::Rule;
pub use tuntap::TapSpec;
pub use vxlan::{VxlanInfo, VxlanSpec};

/// The IP network type of the API (address with prefix length).
pub use ipnet::IpNet;
