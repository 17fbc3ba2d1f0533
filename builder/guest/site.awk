# cairn: reads a site file (the plain TOML that `cairn site sign` accepts:
# `key = "value"` and `key = ["a", "b"]` lines, comments, blank lines) and
# checks every key against this image's [site] allow list and every value
# by its kind. Prints one line per setting (`name N`, `hostname H`,
# `address A`, `gateway G`, `close PORT PROTO`, `env SERVICE VAR=VALUE`,
# `role R`, `server IP`, `token T`, `expires T`, `peer IP`)
# for the init to apply, or
# `error MESSAGE` and exits 1. Run only on a file whose signature verified.
# The binding (recipe/site.rs SiteDeclaration::bind_text): the file must
# name this image (`image`), a `version` that matches this one (exact, or a
# prefix ending in `*`) and a `serial` not below the image's floor, so a
# file for another image, or an older one, is refused.
#   awk -v allow=FILE -v ingress=FILE -v bind=FILE -f site.awk SITE.toml

function fail(m) {
    print "error line " NR ": " m
    bad = 1
    exit 1
}

function str(v) {
    if (v !~ /^"[^"\\%]*"$/ || v ~ /[[:cntrl:]]/)
        fail("`" key "` must be a plain \"string\"")
    return substr(v, 2, length(v) - 2)
}

function ipv4(s, what,    o, n, i) {
    n = split(s, o, ".")
    if (n != 4) fail(what " " s " is not an IPv4 address")
    for (i = 1; i <= 4; i++)
        if (o[i] !~ /^[0-9]+$/ || o[i] + 0 > 255) fail(what " " s " is not an IPv4 address")
}

# Names that steer a shell, the loader or libc rather than the service
# (recipe/site.rs host_steering_name says why each; the lists match).
function steering(v) {
    if (v !~ /^[A-Z_][A-Z0-9_]*$/) return 1
    if (v ~ /^(LD_|MALLOC_|GLIBC_|GCONV_|LOCPATH|NLSPATH|TZDIR|SYSTEMD_|DBUS_|CONTAINERD_|CTR_|XDG_|PYTHON|PERL|RUBY|NODE_|JAVA_TOOL|BASH_FUNC_)/) return 1
    return v ~ /^(PATH|HOME|SHELL|IFS|ENV|BASH_ENV|CDPATH|PS1|PS2|PS4|HOSTALIASES|RES_OPTIONS|LOCALDOMAIN|TMPDIR|TZ|LANG|LANGUAGE|LC_ALL|USER|LOGNAME|TERM|SHELLOPTS|BASHOPTS|POSIXLY_CORRECT|NOTIFY_SOCKET|LISTEN_FDS|LISTEN_PID|INVOCATION_ID|SSL_CERT_FILE|SSL_CERT_DIR|http_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY|ALL_PROXY)$/
}

BEGIN {
    while ((getline l < allow) > 0) ok[l] = 1
    while ((getline l < ingress) > 0) listed[l] = 1
    if (bind == "" || (getline l < bind) <= 0) {
        print "error this image has no site binding (/etc/cairn/site.bind)"
        bad = 1
        exit 1
    }
    do {
        sp = index(l, " ")
        want[substr(l, 1, sp - 1)] = substr(l, sp + 1)
    } while ((getline l < bind) > 0)
}

{ sub(/\r$/, "") }
/^[ \t]*(#.*)?$/ { next }

{
    eq = index($0, "=")
    if (eq == 0) fail("not a `key = value` line")
    key = substr($0, 1, eq - 1)
    val = substr($0, eq + 1)
    gsub(/^[ \t]+|[ \t]+$/, "", key)
    gsub(/^[ \t]+|[ \t]+$/, "", val)
    if (key !~ /^[A-Za-z0-9_.-]+$/) fail("not a `key = value` line")
    if (key in seen) fail("`" key "` is set twice")
    seen[key] = 1
    if (key == "name") {
        s = str(val)
        if (s !~ /^[a-z][a-z0-9-]*$/ || length(s) > 64) fail("site name " s " is not a name")
        print "name " s
        next
    }
    if (key == "image") {
        s = str(val)
        if (s != want["image"]) fail("the site file is for image " s ", not " want["image"])
        print "image " s
        next
    }
    if (key == "version") {
        s = str(val)
        if (s ~ /\*$/) {
            p = substr(s, 1, length(s) - 1)
            if (substr(want["version"], 1, length(p)) != p) fail("the site file is for versions " s ", not " want["version"])
        } else if (s != want["version"]) fail("the site file is for version " s ", not " want["version"])
        print "version " s
        next
    }
    if (key == "serial") {
        s = str(val)
        if (s !~ /^[0-9]+$/ || length(s) > 15) fail("serial " s " is not a whole number (at most 15 digits)")
        if (s + 0 < want["min_serial"] + 0) fail("serial " s " is below this image's min_serial " want["min_serial"] ": an older site file")
        print "serial " s
        next
    }
    if (!(key in ok)) fail("`" key "` is not allowed by this image's [site] allow")
    if (key == "hostname") {
        s = str(val)
        if (s !~ /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/ || length(s) > 63) fail("hostname " s " is not a host name")
        print "hostname " s
    } else if (key == "address") {
        s = str(val)
        p = index(s, "/")
        pre = substr(s, p + 1)
        if (p == 0 || pre !~ /^[0-9]+$/ || pre + 0 < 1 || pre + 0 > 32) fail("address " s " is not IPv4/prefix")
        ipv4(substr(s, 1, p - 1), "address")
        myaddr = substr(s, 1, p - 1)
        print "address " s
    } else if (key == "gateway") {
        s = str(val)
        ipv4(s, "gateway")
        print "gateway " s
    } else if (key == "role") {
        s = str(val)
        if (s != "server" && s != "agent") fail("role " s " is not server or agent")
        if (!((" " want["roles"] " ") ~ (" " s " "))) fail("role " s " is not one of this release's [cluster] roles (" want["roles"] ")")
        role = s
        print "role " s
    } else if (key == "server") {
        s = str(val)
        ipv4(s, "server")
        server = s
        print "server " s
    } else if (key == "join_token") {
        s = str(val)
        if (s !~ /^[a-z0-9][a-z0-9][a-z0-9][a-z0-9][a-z0-9][a-z0-9]\.[a-z0-9]+$/ || length(s) != 23) fail("join_token must be ID.SECRET ([a-z0-9]{6}.[a-z0-9]{16}; cairn site token makes one)")
        print "token " s
    } else if (key == "join_expires") {
        s = str(val)
        if (s !~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z$/) fail("join_expires " s " is not YYYY-MM-DDTHH:MM:SSZ")
        print "expires " s
    } else if (key == "peers") {
        if (val !~ /^\[.*\]$/) fail("peers must be a list of IPv4 addresses")
        inner = substr(val, 2, length(val) - 2)
        n = split(inner, items, ",")
        npeers = 0
        for (i = 1; i <= n; i++) {
            it = items[i]
            gsub(/^[ \t]+|[ \t]+$/, "", it)
            if (it == "") continue
            s = str(it)
            ipv4(s, "peer")
            if (s in peer) fail("peer " s " is listed twice")
            peer[s] = 1
            if (++npeers > 16) fail("peers lists more than 16 nodes")
            print "peer " s
        }
        if (npeers == 0) fail("peers is empty")
    } else if (key == "close_ingress") {
        if (val !~ /^\[.*\]$/) fail("close_ingress must be a list of \"PORT/PROTO\" strings")
        inner = substr(val, 2, length(val) - 2)
        n = split(inner, items, ",")
        for (i = 1; i <= n; i++) {
            it = items[i]
            gsub(/^[ \t]+|[ \t]+$/, "", it)
            if (it == "") continue
            s = str(it)
            if (!(s in listed)) fail("close_ingress " s " is not one of this image's ingress ports")
            split(s, pp, "/")
            print "close " pp[1] " " pp[2]
        }
    } else if (key ~ /^env\.[a-z][a-z0-9-]*\.[A-Za-z_][A-Za-z0-9_]*$/) {
        # Lands double-quoted in a systemd environment file; the init's
        # reader trims spaces at the ends.
        s = str(val)
        split(key, kk, ".")
        if (steering(kk[3])) fail("`" key "`: " kk[3] " steers the host or the loader, not the service; a site cannot set it")
        if (s ~ /[$`]/) fail("`" key "` holds $ or a backtick")
        if (s ~ /^ / || s ~ / $/) fail("`" key "` starts or ends with a space")
        if (length(s) > 1024) fail("`" key "` is longer than 1024 bytes")
        print "env " kk[2] " " kk[3] "=" s
    } else {
        fail("`" key "` is not a setting this image knows")
    }
}

END {
    if (bad) exit 1
    if (!("name" in seen)) {
        print "error the site file has no name"
        exit 1
    }
    if (!("image" in seen) || !("version" in seen) || !("serial" in seen)) {
        print "error the site file does not name its image, version and serial; sign it again with cairn site sign"
        exit 1
    }
    # A cluster node's settings hold together (recipe/site.rs checks the same).
    if (role == "agent" && (!("server" in seen) || !("join_token" in seen))) {
        print "error an agent needs `server` and `join_token`"
        exit 1
    }
    if (("join_token" in seen) && !("join_expires" in seen)) {
        print "error `join_token` needs `join_expires`"
        exit 1
    }
    if (("server" in seen) && ("peers" in seen) && !(server in peer)) {
        print "error server " server " is not one of `peers`"
        exit 1
    }
    if (("address" in seen) && ("peers" in seen) && !(myaddr in peer)) {
        print "error this node's address " myaddr " is not one of `peers`"
        exit 1
    }
}
