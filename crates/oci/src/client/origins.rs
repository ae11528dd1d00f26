//! Where a registry may send the client: the rules for following a redirect and for asking a
//! Bearer realm for a token. A registry's answers are untrusted; these rules keep its
//! redirects and realms from reaching places only the client's network can reach (the
//! instance metadata service, a private network, the machine itself) and from downgrading a
//! TLS registry to plain HTTP.

use std::net::{Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// What kind of place a URL's host names, as far as its text says (names are not resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressClass {
    /// A public address, or a name (other than `localhost`).
    Public,
    /// 127.0.0.0/8, ::1, `localhost`.
    Loopback,
    /// 169.254.0.0/16 (where the instance metadata service answers), fe80::/10.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (shared), fc00::/7 (unique local, where EC2's
    /// IPv6 metadata address is).
    Private,
    /// 0.0.0.0/8 and :: (which reach the machine itself on Linux).
    Unspecified,
    /// Multicast, broadcast and reserved addresses: never a registry.
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::LinkLocal => {
                "a link-local address (169.254.0.0/16, fe80::/10: the instance metadata service)"
            }
            AddressClass::Private => {
                "a private address (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)"
            }
            AddressClass::Unspecified => "an unspecified address (0.0.0.0, ::)",
            AddressClass::Reserved => "a multicast, broadcast or reserved address",
        }
    }
}

/// The class of a URL's host. IPv4 written any way the URL standard reads it (`2852039166`,
/// `0xa9.0xfe.0xa9.0xfe`) is parsed by `url` into its address; IPv4-mapped, -compatible and
/// NAT64 IPv6 forms are classed by the IPv4 address they carry.
pub(crate) fn address_class(url: &Url) -> AddressClass {
    match url.host() {
        Some(Host::Ipv4(ip)) => class_v4(ip),
        Some(Host::Ipv6(ip)) => class_v6(ip),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                AddressClass::Loopback
            } else {
                AddressClass::Public
            }
        }
        None => AddressClass::Reserved,
    }
}

fn class_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, ..] = ip.octets();
    if a == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        AddressClass::Private
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn class_v6(ip: Ipv6Addr) -> AddressClass {
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    let segments = ip.segments();
    let embedded_v4 = || {
        let [.., c, d] = segments;
        Ipv4Addr::new((c >> 8) as u8, c as u8, (d >> 8) as u8, d as u8)
    };
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), 64:ff9b::a.b.c.d (NAT64).
    let mapped = segments[..5] == [0; 5] && segments[5] == 0xffff;
    let compatible = segments[..6] == [0; 6];
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if mapped || compatible || nat64 {
        return class_v4(embedded_v4());
    }
    match segments[0] {
        s if s & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        s if s & 0xfe00 == 0xfc00 => AddressClass::Private,
        s if s & 0xff00 == 0xff00 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// Why the client must not go to `to` on behalf of a registry whose API is at `registry`
/// (scheme and host as the client reaches it), if it must not: an address of a kind the
/// public internet does not route (loopback, link-local, private, unspecified, reserved) is
/// refused unless the registry itself is on an address of that same kind (a registry on
/// 127.0.0.1 may send the client to another port of the machine, never to 169.254.169.254).
pub(crate) fn address_refusal(registry: &Url, to: &Url) -> Option<String> {
    let class = address_class(to);
    if class == AddressClass::Public || class == address_class(registry) {
        return None;
    }
    Some(format!(
        "{} is {}, and the registry is not on one",
        to.host_str().unwrap_or_default(),
        class.describe()
    ))
}

/// Why a redirect from `from` to `to`, received while reading from the registry whose API is at
/// `registry`, must not be followed (`None`: it may): a redirect from https to anything else,
/// or to an address the registry may not send the client to (`address_refusal`).
pub(crate) fn redirect_refusal(registry: &Url, from: &Url, to: &Url) -> Option<String> {
    if to.scheme() != "https" && to.scheme() != "http" {
        return Some(format!(
            "a redirect to a {}: URL (only http and https are followed)",
            to.scheme()
        ));
    }
    if from.scheme() == "https" && to.scheme() != "https" {
        return Some(
            "a redirect from https to plain http (the answer could be read and changed on the way)"
                .into(),
        );
    }
    address_refusal(registry, to).map(|why| format!("a redirect to {why}"))
}

/// Why a Bearer realm may not be asked for a token with the registry's credentials, if it may
/// not. `registry` is where the client reaches the registry's API; `with_credentials` says
/// whether the request would carry the registry's credentials (Basic).
///
/// - over plain HTTP while the registry is reached over TLS: a network neighbour would read
///   them (and forge the token);
/// - at an address the registry may not send the client to (`address_refusal`);
/// - with credentials, over plain HTTP at another origin than the registry's own: credentials
///   configured for a registry reached over plain HTTP (a deployment's allowed exception) go
///   to that exact origin only, not to another port or host the registry names.
pub(crate) fn realm_refusal(registry: &Url, realm: &Url, with_credentials: bool) -> Option<String> {
    if registry.scheme() == "https" && realm.scheme() != "https" {
        return Some("its Bearer realm is not https while the registry is".into());
    }
    if let Some(why) = address_refusal(registry, realm) {
        return Some(format!("its Bearer realm is at {why}"));
    }
    if with_credentials && realm.scheme() != "https" && realm.origin() != registry.origin() {
        return Some(
            "its Bearer realm is plain HTTP on another origin than the registry's own: the \
             registry's credentials go there only over https"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn addresses_are_classed_in_every_spelling() {
        for (text, class) in [
            ("http://169.254.169.254/latest", AddressClass::LinkLocal),
            ("http://2852039166/", AddressClass::LinkLocal),
            ("http://0xa9.0xfe.0xa9.0xfe/", AddressClass::LinkLocal),
            ("http://[fe80::1]/", AddressClass::LinkLocal),
            ("http://[::ffff:169.254.169.254]/", AddressClass::LinkLocal),
            ("http://[64:ff9b::a9fe:a9fe]/", AddressClass::LinkLocal),
            ("http://127.0.0.1:5000/", AddressClass::Loopback),
            ("http://127.1/", AddressClass::Loopback),
            ("http://[::1]/", AddressClass::Loopback),
            ("http://[::ffff:127.0.0.1]/", AddressClass::Loopback),
            ("http://localhost:2375/", AddressClass::Loopback),
            ("http://LOCALHOST./", AddressClass::Loopback),
            ("http://api.localhost/", AddressClass::Loopback),
            ("http://10.0.0.8/", AddressClass::Private),
            ("http://172.16.0.1/", AddressClass::Private),
            ("http://172.31.255.255/", AddressClass::Private),
            ("http://192.168.1.1/", AddressClass::Private),
            ("http://100.64.0.1/", AddressClass::Private),
            ("http://[fd00:ec2::254]/", AddressClass::Private),
            ("http://[fc00::1]/", AddressClass::Private),
            ("http://[::ffff:10.1.2.3]/", AddressClass::Private),
            ("http://0.0.0.0:8080/", AddressClass::Unspecified),
            ("http://0/", AddressClass::Unspecified),
            ("http://[::]/", AddressClass::Unspecified),
            ("http://[::ffff:0.0.0.0]/", AddressClass::Unspecified),
            ("http://255.255.255.255/", AddressClass::Reserved),
            ("http://224.0.0.1/", AddressClass::Reserved),
            ("http://[ff02::1]/", AddressClass::Reserved),
            ("https://172.32.0.1/", AddressClass::Public),
            ("https://8.8.8.8/", AddressClass::Public),
            ("https://[2606:4700::1111]/", AddressClass::Public),
            (
                "https://prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com/",
                AddressClass::Public,
            ),
        ] {
            assert_eq!(address_class(&url(text)), class, "{text}");
        }
    }

    #[test]
    fn redirects_never_go_from_https_to_http() {
        let registry = url("https://registry.example/v2/");
        let from = url("https://registry.example/v2/a/blobs/sha256:00");
        assert!(redirect_refusal(
            &registry,
            &from,
            &url("https://bucket.s3.amazonaws.com/x?X-Amz-Signature=1")
        )
        .is_none());
        let refused = redirect_refusal(&registry, &from, &url("http://bucket.s3.amazonaws.com/x"));
        assert!(refused.unwrap().contains("from https to plain http"));
        // A later hop is judged from where the client is: https storage cannot send it to http.
        let storage = url("https://storage.example/x");
        assert!(redirect_refusal(&registry, &storage, &url("http://storage.example/y")).is_some());
        // A plain-HTTP registry (a deployment's exception) may redirect to http or https.
        let insecure = url("http://127.0.0.1:5000/v2/");
        assert!(redirect_refusal(&insecure, &insecure, &url("http://127.0.0.1:5001/b")).is_none());
        assert!(
            redirect_refusal(&insecure, &insecure, &url("https://storage.example/b")).is_none()
        );
        assert!(redirect_refusal(&registry, &from, &url("file:///etc/passwd")).is_some());
        assert!(redirect_refusal(&registry, &from, &url("ftp://storage.example/b")).is_some());
    }

    #[test]
    fn redirects_reach_no_private_address_unless_the_registry_is_on_one_of_its_kind() {
        let public = url("https://registry.example/v2/");
        for to in [
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/latest/meta-data/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://2852039166/",
            "https://127.0.0.1:2375/containers/json",
            "https://[::1]/",
            "https://localhost/",
            "https://10.0.0.8/",
            "https://172.16.3.4/",
            "https://192.168.0.1/",
            "https://0.0.0.0/",
            "https://[::]/",
            "https://[fe80::1]/",
        ] {
            let refused = redirect_refusal(&public, &public, &url(to));
            assert!(refused.is_some(), "{to} was allowed from a public registry");
        }
        // The rig's registries are on loopback: another loopback port is the same kind.
        let loopback = url("http://127.0.0.1:5000/v2/");
        assert!(redirect_refusal(&loopback, &loopback, &url("http://127.0.0.1:6000/s")).is_none());
        assert!(redirect_refusal(&loopback, &loopback, &url("http://localhost:6000/s")).is_none());
        // ...but not the metadata service, nor a private network.
        let metadata = redirect_refusal(&loopback, &loopback, &url("http://169.254.169.254/x"));
        assert!(metadata.unwrap().contains("link-local"));
        assert!(redirect_refusal(&loopback, &loopback, &url("http://10.0.0.8/x")).is_some());
        // A registry in a private network may use storage in it.
        let private = url("https://10.0.0.5/v2/");
        assert!(redirect_refusal(&private, &private, &url("https://10.0.0.6/s")).is_none());
        assert!(redirect_refusal(&private, &private, &url("https://169.254.169.254/s")).is_some());
    }

    #[test]
    fn realms_get_credentials_only_under_the_rules() {
        let tls = url("https://registry.example/v2/");
        // Docker Hub's flow: a realm on another host, over TLS.
        assert!(realm_refusal(&tls, &url("https://auth.example/token"), true).is_none());
        assert!(realm_refusal(&tls, &url("http://auth.example/token"), true).is_some());
        assert!(realm_refusal(&tls, &url("http://auth.example/token"), false).is_some());
        assert!(realm_refusal(&tls, &url("https://169.254.169.254/token"), false).is_some());
        assert!(realm_refusal(&tls, &url("https://10.1.1.1/token"), true).is_some());
        // A plain-HTTP registry: its own origin may be the realm; another port or host gets no
        // credentials in clear (anonymous token requests may still go there).
        let insecure = url("http://127.0.0.1:5000/v2/");
        assert!(realm_refusal(&insecure, &url("http://127.0.0.1:5000/token"), true).is_none());
        let elsewhere = realm_refusal(&insecure, &url("http://127.0.0.1:5001/token"), true);
        assert!(elsewhere.unwrap().contains("another origin"));
        assert!(realm_refusal(&insecure, &url("http://127.0.0.1:5001/token"), false).is_none());
        assert!(realm_refusal(&insecure, &url("https://auth.example/token"), true).is_none());
        assert!(realm_refusal(&insecure, &url("http://169.254.169.254/token"), false).is_some());
    }
}
