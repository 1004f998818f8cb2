//! Every function a rule can call beyond the operators: the strings extension (as Kubernetes
//! enables it), Kubernetes' IP and CIDR library (which the engine adds), and the standard
//! functions rules typically use. Each case is an expression that must be true, run as a
//! selector; error cases feed the bad value through `attachment.ip` so that compile-time
//! validation of literals does not catch it first.

use static_macvlan_allocator::rules::{
    compile_selector, selector_allows, AttachmentInfo, Budget, Context, PodInfo, RuleError,
};

fn holds(expr: &str) -> Result<bool, RuleError> {
    let sel = compile_selector("t", expr)?;
    selector_allows(&sel, &Context::default(), &Budget::default())
}

fn check_all(cases: &[&str]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|expr| match holds(expr) {
            Ok(true) => None,
            other => Some(format!("{expr}: {other:?}")),
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `expr` (which reads `attachment.ip`) fails at evaluation with `text` when fed `input`.
fn fails_with(expr: &str, input: &str, text: &str) {
    let sel = compile_selector("t", expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let ctx = Context {
        pod: PodInfo::default(),
        attachment: AttachmentInfo {
            ip: input.to_owned(),
            ..AttachmentInfo::default()
        },
    };
    match selector_allows(&sel, &ctx, &Budget::default()) {
        Err(RuleError::Eval { message, .. }) => {
            assert!(message.contains(text), "{expr} on {input:?}: {message}")
        }
        other => panic!("{expr} on {input:?}: expected an evaluation error, got {other:?}"),
    }
}

#[test]
fn split() {
    check_all(&[
        r#""a-b-c".split("-") == ["a", "b", "c"]"#,
        r#""web-7".split("-")[1] == "7""#,
        r#""a-b-c".split("-", 2) == ["a", "b-c"]"#,
        r#""a-b-c".split("-", 0) == []"#,
        r#""a-b-c".split("-", -1) == ["a", "b", "c"]"#,
        r#""abc".split("") == ["a", "b", "c"]"#,
        r#""".split("-") == [""]"#,
        r#""a--b".split("-") == ["a", "", "b"]"#,
        r#""héllo wörld".split(" ") == ["héllo", "wörld"]"#,
    ]);
}

#[test]
fn substring() {
    check_all(&[
        r#""hello".substring(1) == "ello""#,
        r#""hello".substring(1, 3) == "el""#,
        r#""hello".substring(5) == """#,
        r#""héllo".substring(1, 2) == "é""#,
    ]);
    fails_with("attachment.ip.substring(2, 5) == ''", "abc", "substring");
    fails_with("attachment.ip.substring(2, 1) == ''", "abc", "substring");
}

#[test]
fn case_and_trim() {
    check_all(&[
        r#""Hello World".lowerAscii() == "hello world""#,
        r#""Hello World".upperAscii() == "HELLO WORLD""#,
        r#""ÉCOLE".lowerAscii() == "École""#,
        r#""  x \t\n".trim() == "x""#,
        r#""".trim() == """#,
        r#""abc".reverse() == "cba""#,
        r#""héllo".reverse() == "olléh""#,
    ]);
}

#[test]
fn index_of_and_char_at() {
    check_all(&[
        r#""hello".indexOf("l") == 2"#,
        r#""hello".indexOf("l", 3) == 3"#,
        r#""hello".indexOf("z") == -1"#,
        r#""hello".indexOf("") == 0"#,
        r#""héllo".indexOf("l") == 2"#,
        r#""hello".lastIndexOf("l") == 3"#,
        r#""hello".lastIndexOf("l", 2) == 2"#,
        r#""hello".lastIndexOf("z") == -1"#,
        r#""abc".charAt(1) == "b""#,
        r#""abc".charAt(3) == """#,
        r#""héllo".charAt(1) == "é""#,
    ]);
    fails_with(
        "attachment.ip.charAt(4) == ''",
        "abc",
        "index out of range: 4",
    );
    fails_with(
        "attachment.ip.indexOf('a', 9) == 0",
        "abc",
        "index out of range",
    );
}

#[test]
fn replace() {
    check_all(&[
        r#""a.b.c".replace(".", "-") == "a-b-c""#,
        r#""a.b.c".replace(".", "-", 1) == "a-b.c""#,
        r#""a.b.c".replace(".", "-", 0) == "a.b.c""#,
        r#""a.b.c".replace(".", "-", -1) == "a-b-c""#,
        r#""ab".replace("", "-") == "-a-b-""#,
        r#""aaa".replace("a", "") == """#,
        r#"pod.namespace.replace("x", "y") == """#,
    ]);
}

#[test]
fn join() {
    check_all(&[
        r#"["a", "b", "c"].join("-") == "a-b-c""#,
        r#"["a", "b"].join() == "ab""#,
        r#"[].join("-") == """#,
        r#""a-b-c".split("-").join(".") == "a.b.c""#,
        r#"{"k": "v"}.map(k, k + "=" + "v").join(",") == "k=v""#,
    ]);
    // A list of non-strings is a compile error when known (statically, or because it fails on
    // any pod), an evaluation error when it depends on the pod.
    assert!(holds(r#"[1, 2].join("-") == "1-2""#).is_err());
    assert!(holds(r#"[pod.name, dyn(1)].join("-") == """#).is_err());
    fails_with(
        r#"(attachment.ip == "x" ? [dyn(1)] : ["a"]).join("-") == "a""#,
        "x",
        "Unexpected type: got 'int', want 'string'",
    );
}

#[test]
fn format_and_quote() {
    check_all(&[
        r#""%s-%d".format(["web", 7]) == "web-7""#,
        r#""%x".format([255]) == "ff""#,
        r#""%X".format([255]) == "FF""#,
        r#""%o".format([8]) == "10""#,
        r#""%b".format([5]) == "101""#,
        r#""%.2f".format([1.5]) == "1.50""#,
        r#""100%%".format([]) == "100%""#,
        r#"strings.quote("a\"b") == "\"a\\\"b\"""#,
    ]);
}

#[test]
fn standard_functions_rules_use() {
    check_all(&[
        r#"size("héllo") == 5"#,
        r#""abc".size() == 3"#,
        r#"size(["a", "b"]) == 2"#,
        r#"size({"a": "b"}) == 1"#,
        r#""abc".contains("b")"#,
        r#""abc".startsWith("ab")"#,
        r#""abc".endsWith("bc")"#,
        r#""web-12".matches("^web-[0-9]+$")"#,
        r#"matches("web-12", "[0-9]+")"#,
        r#"int("42") == 42"#,
        r#"int(4.9) == 4"#,
        r#"uint("42") == 42u"#,
        r#"double("1.5") == 1.5"#,
        r#"string(42) == "42""#,
        r#"string(true) == "true""#,
        r#"bool("true")"#,
        r#"type("a") == string"#,
        r#"[1, 2, 3].exists(x, x == 2)"#,
        r#"[1, 2, 3].all(x, x > 0)"#,
        r#"[1, 2, 3].exists_one(x, x == 2)"#,
        r#"[1, 2, 3].filter(x, x > 1) == [2, 3]"#,
        r#"[1, 2, 3].map(x, x * 10) == [10, 20, 30]"#,
        r#"[1, 2, 3].map(x, x > 1, x * 2) == [4, 6]"#,
        r#"pod.?name.hasValue()"#,
        r#"{"a": "b"}.?a.orValue("") == "b""#,
        r#"{"a": "1"}[?"b"].orValue("d") == "d""#,
        r#"optional.of("x").value() == "x""#,
        r#"!optional.none().hasValue()"#,
        r#""b" in ["a", "b"]"#,
        r#""a" in {"a": 1}"#,
        r#"7 % 4 == 3"#,
        r#"10 / 4 == 2"#,
    ]);
    fails_with("int(attachment.ip) == 1", "x1", "int(): string parse error");
    // Optional selection checks the field of pod and attachment too.
    assert!(holds("pod.?nothing.hasValue()").is_err());
}

#[test]
fn ip_library() {
    check_all(&[
        r#"ip("10.0.0.1").family() == 4"#,
        r#"ip("2001:db8::1").family() == 6"#,
        r#"string(ip("10.0.0.1")) == "10.0.0.1""#,
        r#"string(ip("2001:DB8:0::1")) == "2001:db8::1""#,
        r#"ip("10.0.0.1") == ip("10.0.0.1")"#,
        r#"ip("10.0.0.1") != ip("10.0.0.2")"#,
        r#"isIP("10.0.0.1")"#,
        r#"isIP("::1")"#,
        r#"!isIP("10.0.0.256")"#,
        r#"!isIP("010.0.0.1")"#,
        r#"!isIP("::ffff:10.0.0.1")"#,
        r#"!isIP("fe80::1%eth0")"#,
        r#"!isIP("10.0.0.0/8")"#,
        r#"ip.isCanonical("2001:db8::1")"#,
        r#"!ip.isCanonical("2001:DB8::1")"#,
        r#"!ip.isCanonical("2001:db8:0::1")"#,
        r#"ip.isCanonical("10.0.0.1")"#,
        r#"ip("0.0.0.0").isUnspecified()"#,
        r#"ip("::").isUnspecified()"#,
        r#"!ip("10.0.0.1").isUnspecified()"#,
        r#"ip("127.0.0.1").isLoopback()"#,
        r#"ip("127.8.0.1").isLoopback()"#,
        r#"ip("::1").isLoopback()"#,
        r#"ip("224.0.0.251").isLinkLocalMulticast()"#,
        r#"!ip("224.0.1.1").isLinkLocalMulticast()"#,
        r#"ip("ff02::fb").isLinkLocalMulticast()"#,
        r#"ip("169.254.169.254").isLinkLocalUnicast()"#,
        r#"ip("fe80::1").isLinkLocalUnicast()"#,
        r#"!ip("10.0.0.1").isLinkLocalUnicast()"#,
        r#"ip("10.0.0.1").isGlobalUnicast()"#,
        r#"ip("2001:db8::1").isGlobalUnicast()"#,
        r#"!ip("255.255.255.255").isGlobalUnicast()"#,
        r#"!ip("fe80::1").isGlobalUnicast()"#,
        r#"!ip("ff02::1").isGlobalUnicast()"#,
    ]);
    fails_with(
        "ip(attachment.ip).family() == 4",
        "10.0.0.999",
        "is not a valid IP address",
    );
    fails_with(
        "ip(attachment.ip).family() == 4",
        "::ffff:10.0.0.1",
        "IPv4-mapped IPv6 address",
    );
    fails_with("ip(attachment.ip).family() == 4", "fe80::1%eth0", "zone");
    fails_with(
        "ip.isCanonical(attachment.ip)",
        "nope",
        "is not a valid IP address",
    );
}

#[test]
fn cidr_library() {
    check_all(&[
        r#"cidr("10.0.0.0/8").containsIP(ip("10.1.2.3"))"#,
        r#"cidr("10.0.0.0/8").containsIP("10.1.2.3")"#,
        r#"!cidr("10.0.0.0/8").containsIP("11.0.0.1")"#,
        r#"!cidr("10.0.0.0/8").containsIP("::1")"#,
        r#"cidr("10.1.2.3/8").containsIP("10.200.0.1")"#,
        r#"cidr("2001:db8::/32").containsIP("2001:db8:ffff::1")"#,
        r#"cidr("0.0.0.0/0").containsIP("255.255.255.255")"#,
        r#"cidr("10.0.0.0/8").containsCIDR(cidr("10.1.0.0/16"))"#,
        r#"cidr("10.0.0.0/8").containsCIDR("10.1.0.0/16")"#,
        r#"cidr("10.0.0.0/8").containsCIDR("10.0.0.0/8")"#,
        r#"!cidr("10.0.0.0/8").containsCIDR("10.0.0.0/7")"#,
        r#"!cidr("10.0.0.0/8").containsCIDR("2001:db8::/32")"#,
        r#"cidr("10.1.2.3/8").ip() == ip("10.1.2.3")"#,
        r#"cidr("10.1.2.3/8").masked() == cidr("10.0.0.0/8")"#,
        r#"cidr("10.1.2.3/8") != cidr("10.0.0.0/8")"#,
        r#"string(cidr("10.1.2.3/8").masked()) == "10.0.0.0/8""#,
        r#"string(cidr("2001:db8::1/64").masked()) == "2001:db8::/64""#,
        r#"cidr("10.0.0.0/8").prefixLength() == 8"#,
        r#"cidr("::/0").prefixLength() == 0"#,
        r#"isCIDR("10.0.0.0/8")"#,
        r#"isCIDR("2001:db8::/128")"#,
        r#"!isCIDR("10.0.0.0/33")"#,
        r#"!isCIDR("10.0.0.0")"#,
        r#"!isCIDR("10.0.0.0/08")"#,
    ]);
    fails_with(
        "cidr('10.0.0.0/8').containsIP(attachment.ip)",
        "10.0.0",
        "is not a valid IP address",
    );
    fails_with(
        "cidr('10.0.0.0/8').containsCIDR(attachment.ip)",
        "10.0.0.0/99",
        "prefix length must be 0 to 32",
    );
    fails_with(
        "cidr(attachment.ip).prefixLength() > 0",
        "10.0.0.0",
        "no '/'",
    );
}

#[test]
fn requested_addresses_can_be_checked_against_a_range() {
    let sel = compile_selector(
        "vlan230",
        r#"attachment.ip == "" || cidr("10.230.0.0/25").containsIP(attachment.ip)"#,
    )
    .unwrap();
    for (ip, allowed) in [("", true), ("10.230.0.10", true), ("10.230.0.200", false)] {
        let ctx = Context {
            attachment: AttachmentInfo {
                ip: ip.to_owned(),
                ..AttachmentInfo::default()
            },
            ..Context::default()
        };
        assert_eq!(
            selector_allows(&sel, &ctx, &Budget::default()).unwrap(),
            allowed,
            "{ip}"
        );
    }
}
