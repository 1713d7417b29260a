package control

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// ParseAddrs splits a control-plane address list ("host:port" or
// "host:port,host:port,..."), dropping blanks and duplicates.
func ParseAddrs(addrs string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, a := range strings.Split(addrs, ",") {
		a = strings.TrimSpace(a)
		if a == "" || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("control: no control-plane address; give host:port, or several separated by commas")
	}
	return out, nil
}

// Dial connects to the control plane at addrs, one address or several
// separated by commas (every control-plane process serves every call). With
// several, calls go round-robin to those that answer: a control plane that
// died or hangs is left out once its connection fails (keepalives find a
// paused one within two seconds), and taken back when it answers again.
func Dial(addrs string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	list, err := ParseAddrs(addrs)
	if err != nil {
		return nil, err
	}
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Second, Timeout: time.Second, PermitWithoutStream: true}),
		// Reconnect to a control plane that came back within a second, not
		// after gRPC's default backoff of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	}
	if len(list) == 1 {
		conn, err := grpc.NewClient(list[0], append(base, opts...)...)
		if err != nil {
			return nil, fmt.Errorf("control: address %q: %w", list[0], err)
		}
		return conn, nil
	}
	r := manual.NewBuilderWithScheme("borealis-control")
	state := resolver.State{}
	for _, a := range list {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	base = append(base, grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	conn, err := grpc.NewClient(r.Scheme()+":///control", append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("control: addresses %q: %w", addrs, err)
	}
	return conn, nil
}

// ServerOptions are the control plane's gRPC server options: it admits the
// keepalive pings Dial's clients send.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 500 * time.Millisecond, PermitWithoutStream: true}),
	}
}
