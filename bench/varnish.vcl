vcl 4.1;

# ringcache bench: Varnish peer. run.sh writes a copy of this file into its
# temporary directory with @ORIGIN_PORT@ filled in (the demo origin's port).

backend demo_origin {
    .host = "127.0.0.1";
    .port = "@ORIGIN_PORT@";
    .connect_timeout = 2s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 10s;
}

sub vcl_recv {
    # Everything the bench sends is a cacheable GET; leave the built-in
    # logic (which also passes requests carrying Cookie or Authorization)
    # in place by not returning here.
}

sub vcl_backend_response {
    # TTL comes from the origin's Cache-Control (the built-in behaviour);
    # nothing is overridden here.
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
