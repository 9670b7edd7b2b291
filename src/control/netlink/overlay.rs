//! The links and forwarding entries of spanning networks: a bridge, a VXLAN device, the
//! head-end replication entries to the peers and the static entries of local guests.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkVxlan};

use super::{ctx, NetlinkError};
use crate::switch::Mac;

/// An interface as the overlay needs it: its index, MTU and first IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub mtu: u32,
    pub address: Option<Ipv4Addr>,
}

/// The index, MTU and first IPv4 address of `name`, or `None` when there is no such link.
pub async fn underlay(handle: &Handle, name: &str) -> Result<Option<Underlay>, NetlinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    let Some(index) = super::link_index(handle, name).await else {
        return Ok(None);
    };
    let mut links = handle.link().get().match_index(index).execute();
    let Some(link) = links
        .try_next()
        .await
        .map_err(ctx(format!("read the MTU of {name}")))?
    else {
        return Ok(None);
    };
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut address = None;
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(ctx(format!("list the addresses of {name}")))?
    {
        if address.is_some() {
            continue;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
        // point-to-point link, and the same as IFA_LOCAL (or alone) elsewhere.
        let v4 = |want_local: bool| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) if want_local => Some(*ip),
                AddressAttribute::Address(std::net::IpAddr::V4(ip)) if !want_local => Some(*ip),
                _ => None,
            })
        };
        address = v4(true).or_else(|| v4(false));
    }
    Ok(Some(Underlay {
        index,
        mtu,
        address,
    }))
}

/// Makes bridge `name` (down, no STP) with MAC `mac` and MTU `mtu`; returns its index.
pub async fn add_bridge(
    handle: &Handle,
    name: &str,
    mac: Mac,
    mtu: u32,
) -> Result<u32, NetlinkError> {
    handle
        .link()
        .add(
            LinkBridge::new(name)
                .down()
                .address(mac.0.to_vec())
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!("make bridge {name}")))?;
    super::link_index(handle, name)
        .await
        .ok_or_else(|| not_found(name))
}

/// Makes VXLAN device `name` with identifier `vni` from `local` over link `dev` (UDP port
/// `port`), with MTU `mtu`, learning where remote guests are from their frames; returns its
/// index.
pub async fn add_vxlan(
    handle: &Handle,
    name: &str,
    vni: u32,
    (dev, local, port): (u32, Ipv4Addr, u16),
    mtu: u32,
) -> Result<u32, NetlinkError> {
    handle
        .link()
        .add(
            LinkVxlan::new(name, vni)
                .dev(dev)
                .local(local)
                .port(port)
                .learning(true)
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!(
            "make VXLAN device {name} (network identifier {vni}; another device of this namespace may have it — give the network another vni)"
        )))?;
    super::link_index(handle, name)
        .await
        .ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> NetlinkError {
    ctx(format!("find {name} right after making it"))(rtnetlink::Error::RequestFailed)
}

/// Deletes link `index` (`name`, for the error).
pub async fn del_link(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.raw_code() == -rustix::io::Errno::NODEV.raw_os_error() =>
        {
            Ok(())
        }
        Err(e) => Err(ctx(format!("delete {name}"))(e)),
    }
}

/// `bridge fdb append 00:00:00:00:00:00 dev VXLAN dst PEER`: every frame VXLAN device
/// `index` floods goes to `peer` too (head-end replication).
pub async fn flood_to(
    handle: &Handle,
    index: u32,
    peer: Ipv4Addr,
    name: &str,
) -> Result<(), NetlinkError> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            peer,
        )));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(message));
    // Append: one all-zeros entry per peer (create alone would refuse the second).
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    super::acked(handle, request, format!("make {name} flood to {peer}")).await
}

/// `bridge fdb replace MAC dev PORT master static`: the bridge sends frames for `mac` to
/// its port `index` and never learns it elsewhere.
pub async fn pin(handle: &Handle, index: u32, mac: Mac, name: &str) -> Result<(), NetlinkError> {
    handle
        .neighbours()
        .add_bridge(index, &mac.0)
        .state(NeighbourState::Noarp)
        .flags(NeighbourFlags::Controller)
        .replace()
        .execute()
        .await
        .map_err(ctx(format!("pin {mac} to {name} in its bridge")))
}

/// Takes out what [`pin`] put in (nothing to do when it is gone already).
pub async fn unpin(handle: &Handle, index: u32, mac: Mac, name: &str) -> Result<(), NetlinkError> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Noarp;
    message.header.flags = NeighbourFlags::Controller;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    match handle.neighbours().del(message).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.raw_code() == -rustix::io::Errno::NOENT.raw_os_error()
                || m.raw_code() == -rustix::io::Errno::NODEV.raw_os_error() =>
        {
            Ok(())
        }
        Err(e) => Err(ctx(format!("unpin {mac} from {name}"))(e)),
    }
}
