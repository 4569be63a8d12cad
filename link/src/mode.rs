//! The macvtap mode (defined in `macvtap-core`) as netlink's `IFLA_MACVLAN_MODE` value, and back.

use macvtap_core::MacvtapMode;
use netlink_packet_route::link::MacVtapMode as NlMode;

pub(crate) fn to_netlink(mode: MacvtapMode) -> NlMode {
    match mode {
        MacvtapMode::Bridge => NlMode::Bridge,
        MacvtapMode::Vepa => NlMode::Vepa,
        MacvtapMode::Private => NlMode::Private,
        MacvtapMode::Passthru => NlMode::Passthrough,
        MacvtapMode::Source => NlMode::Source,
    }
}

/// `None` for a mode the kernel reports that macvtap-operator does not create.
pub(crate) fn from_netlink(mode: NlMode) -> Option<MacvtapMode> {
    Some(match mode {
        NlMode::Bridge => MacvtapMode::Bridge,
        NlMode::Vepa => MacvtapMode::Vepa,
        NlMode::Private => MacvtapMode::Private,
        NlMode::Passthrough => MacvtapMode::Passthru,
        NlMode::Source => MacvtapMode::Source,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_round_trips_through_netlink() {
        for m in MacvtapMode::ALL {
            assert_eq!(from_netlink(to_netlink(m)), Some(m));
        }
    }
}
