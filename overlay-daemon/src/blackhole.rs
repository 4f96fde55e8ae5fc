//! `--ip-blackhole-route`, as flanneld: a blackhole route for the node's own subnet while the lease is ours, so
//! traffic to pod addresses nobody holds is dropped here rather than leaked out of the default route.
//!
//! Unlike flanneld's, the route has the highest metric: the bridge's connected route to the same subnet (metric
//! 0) keeps precedence while it exists, and the blackhole takes over only when it is gone (no bridge, or `cni0`
//! down). flanneld adds its route with metric 0, which the kernel refuses next to the bridge's route (it then logs
//! an error every resync). Blackhole routes of our shape for another subnet (a previous lease) are removed.

use ipnet::IpNet;
use twill_kernel::{Error, Family, Handle, Route, RouteFilter, RouteType, TABLE_MAIN};

/// The last resort: any other route to the subnet wins.
pub const METRIC: u32 = u32::MAX;

pub struct Blackhole {
    handle: Handle,
    own: IpNet,
    network: IpNet,
    /// Whether we believe the route is in place (a resync re-adds it anyway).
    held: bool,
}

impl Blackhole {
    pub fn new(handle: Handle, own: IpNet, network: IpNet) -> Self {
        Blackhole {
            handle,
            own,
            network,
            held: false,
        }
    }

    fn route(dst: IpNet) -> Route {
        Route::blackhole(dst).metric(METRIC)
    }

    /// Start-up: removes blackhole routes of our shape (inside the network, a node subnet's size) for any other
    /// subnet, e.g. the one a previous run held, then adds ours.
    pub fn start(&mut self) -> Result<(), Error> {
        let filter = RouteFilter {
            family: Some(Family::of(&self.own.addr())),
            table: Some(TABLE_MAIN),
            oif: None,
        };
        for r in self.handle.routes(filter)? {
            let ours = r.kind == RouteType::BlackHole
                && r.dst != self.own
                && r.dst.prefix_len() == self.own.prefix_len()
                && self.network.contains(&r.dst);
            if ours {
                self.delete(r.dst)?;
            }
        }
        self.ensure(true)
    }

    /// Adds the route while the lease is ours (`holding`), removes it when it is not. One request when the
    /// route is already there (the kernel answers "exists"), whatever the size of the routing table.
    pub fn ensure(&mut self, holding: bool) -> Result<(), Error> {
        if !holding {
            if self.held {
                self.delete(self.own)?;
                self.held = false;
            }
            return Ok(());
        }
        match self.handle.add_route(&Self::route(self.own)) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        self.held = true;
        Ok(())
    }

    fn delete(&self, dst: IpNet) -> Result<(), Error> {
        match self.handle.delete_route(&Route::blackhole(dst)) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}
