//! Addresses and links through rtnetlink (never by running `ip`).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

pub mod overlay;
pub use overlay::del_link;

/// A netlink failure, with what tapwire was doing.
#[derive(Debug, thiserror::Error)]
#[error("netlink: cannot {what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// Opens a netlink connection, driven by a task on the current runtime.
pub fn connect() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Index of interface `name`, or None.
pub async fn link_index(handle: &Handle, name: &str) -> Option<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index)
}

/// Whether link `index` is up; None when no link has that index any more (deleted).
pub async fn link_up(handle: &Handle, index: u32) -> Result<Option<bool>, NetlinkError> {
    use rtnetlink::packet_route::link::LinkFlags;
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.flags.contains(LinkFlags::Up))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.raw_code() == -rustix::io::Errno::NODEV.raw_os_error() =>
        {
            Ok(None)
        }
        Err(e) => Err(ctx(format!("read the state of link {index}"))(e)),
    }
}

/// MAC addresses of bridge `bridge` and of every interface enslaved to it.
pub async fn bridge_macs(
    handle: &Handle,
    bridge: u32,
) -> Result<Vec<crate::switch::Mac>, NetlinkError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().execute();
    let mut macs = Vec::new();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(ctx("list links to find the bridge's ports"))?
    {
        let in_bridge = link.header.index == bridge
            || link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == bridge));
        if !in_bridge {
            continue;
        }
        for a in &link.attributes {
            if let LinkAttribute::Address(b) = a {
                if let Ok(m) = <[u8; 6]>::try_from(b.as_slice()) {
                    macs.push(crate::switch::Mac(m));
                }
            }
        }
    }
    Ok(macs)
}

/// Sets `index` up, with `mtu` if given.
pub async fn set_up(
    handle: &Handle,
    index: u32,
    name: &str,
    mtu: Option<u32>,
) -> Result<(), NetlinkError> {
    // Two requests, so that a refused MTU is named as such.
    if let Some(mtu) = mtu {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(ctx(format!(
                "set the MTU of {name} to {mtu} (a TAP takes 68 to {}; choose another --mtu)",
                crate::config::TAP_MAX_MTU
            )))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(ctx(format!("set {name} up")))
}

/// Gives link `index` the MAC address `mac` (before it is up: a TAP takes a new address
/// while up too, but nothing has learned the old one yet).
pub async fn set_mac(
    handle: &Handle,
    index: u32,
    name: &str,
    mac: crate::switch::Mac,
) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!("set the MAC address of {name} to {mac}")))
}

/// Tells link `index` to hand over at most `segments` segments per super-frame
/// (`gso_max_segs`; see [`crate::offload::max_segments`]).
pub async fn set_gso_max_segs(
    handle: &Handle,
    index: u32,
    name: &str,
    segments: u32,
) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(rtnetlink::packet_route::link::LinkAttribute::GsoMaxSegs(
                    segments,
                ))
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!("set gso_max_segs of {name} to {segments}")))
}

/// Sets `index` down.
pub async fn set_down(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(ctx(format!("set {name} down")))
}

/// Enslaves `index` to bridge `bridge_index`.
pub async fn set_master(
    handle: &Handle,
    index: u32,
    bridge_index: u32,
    name: &str,
) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!("attach {name} to its bridge")))
}

/// Releases `index` from its bridge.
pub async fn no_master(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).nocontroller().build())
        .execute()
        .await
        .map_err(ctx(format!("detach {name} from its bridge")))
}

/// Adds `addr/prefix` to `index`.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    name: &str,
) -> Result<(), NetlinkError> {
    handle
        .address()
        .add(index, addr.into(), prefix)
        .execute()
        .await
        .map_err(ctx(format!("add {addr}/{prefix} to {name} (is the subnet already used by another interface? choose another --subnet)")))
}

/// Removes `addr/prefix` from `index` if present.
pub async fn del_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    name: &str,
) -> Result<(), NetlinkError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(ctx(format!("list addresses of {name}")))?
    {
        let matches = msg.header.prefix_len == prefix
            && msg.attributes.iter().any(|a| matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(std::net::IpAddr::V4(ip)) if *ip == addr));
        if matches {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(ctx(format!("remove {addr}/{prefix} from {name}")))?;
        }
    }
    Ok(())
}

/// Gives link `index` no queueing discipline (`tc qdisc replace dev NAME root noqueue`).
///
/// A multi-queue TAP is made with room for 256 queues, and the kernel's default qdisc for it
/// (`mq`) keeps a `pfifo_fast` with its rings for each: about 6.5 MiB of kernel memory per
/// TAP, measured here. A TAP's own queue (its ring per attached queue) is where packets wait
/// for the relay anyway, and the TAP never asks to queue, so nothing is lost by sending
/// straight to it.
pub async fn no_qdisc(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    use rtnetlink::packet_core::{
        NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
    };
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let what = || format!("give {name} no queueing discipline (noqueue)");
    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle::ROOT;
    message.attributes.push(TcAttribute::Kind("noqueue".into()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    acked(handle, request, what()).await
}

/// Sends `request` (which asks for an acknowledgement) and waits for the kernel's answer: an
/// error names `what` was being done.
pub(crate) async fn acked(
    handle: &Handle,
    request: rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    what: String,
) -> Result<(), NetlinkError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    let mut handle = handle.clone();
    let mut responses = handle.request(request).map_err(ctx(what.clone()))?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::Error(e) = response.payload {
            if e.code.is_some() {
                return Err(ctx(what)(rtnetlink::Error::NetlinkError(e)));
            }
        }
    }
    Ok(())
}
