package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	ctlplane "github.com/borealis-db/borealis/internal/control"
)

// controlPlaneReport is one control-plane process, as status shows it.
type controlPlaneReport struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	AZ   string `json:"az,omitempty"`
	// Up: it answered.
	Up bool `json:"up"`
	// Leader: it leads (the control planes that answered say so).
	Leader bool `json:"leader"`
	// Error says why it did not answer.
	Error string `json:"error,omitempty"`
}

// controlPlaneAskTimeout bounds each control plane's answer: one that hangs
// is shown down rather than holding status up.
const controlPlaneAskTimeout = 2 * time.Second

// addControlPlanes asks each control plane (cluster.json's, else those of
// --control) who it is and who leads, in parallel, and sets
// rep.ControlPlanes and rep.ControlLeader. A leader none of them lists (a
// control plane outside cluster.json) is added as it names itself.
func addControlPlanes(ctx context.Context, rep *statusReport, addrs string, cf *cluster.File) {
	cps := []controlPlaneReport{}
	if cf != nil {
		for _, c := range cf.ControlPlanes() {
			cps = append(cps, controlPlaneReport{Name: c.ID, Addr: c.Addr, AZ: c.AZ})
		}
	}
	if len(cps) == 0 {
		list, _ := ctlplane.ParseAddrs(addrs)
		for _, a := range list {
			cps = append(cps, controlPlaneReport{Addr: a})
		}
	}
	answers := make([]*pb.ControlPlaneStatusResponse, len(cps))
	var wg sync.WaitGroup
	for i := range cps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := askControlPlane(ctx, cps[i].Addr)
			if err != nil {
				cps[i].Error = shortErr(err)
				return
			}
			answers[i] = resp
		}()
	}
	wg.Wait()
	leader, leaderAddr := "", ""
	for i, a := range answers {
		if a == nil {
			continue
		}
		cps[i].Up = true
		if s := a.GetSelf(); s != nil {
			if cps[i].Name == "" {
				cps[i].Name = s.GetName()
			}
			if cps[i].AZ == "" {
				cps[i].AZ = s.GetAz()
			}
		}
		// The one that says it leads is surest; else what the others read.
		if a.GetLeading() {
			leader, leaderAddr = cps[i].Name, cps[i].Addr
		} else if l := a.GetLeader(); l != nil && leader == "" {
			leader, leaderAddr = l.GetName(), l.GetAddr()
		} else if leader == "" && a.GetLeaderError() != "" {
			rep.ControlLeaderError = a.GetLeaderError()
		}
	}
	if leader != "" {
		rep.ControlLeaderError = ""
		found := false
		for i := range cps {
			if cps[i].Name == leader || cps[i].Addr == leaderAddr {
				cps[i].Leader, found = true, true
			}
		}
		if !found {
			cps = append(cps, controlPlaneReport{Name: leader, Addr: leaderAddr, Leader: true})
		}
	}
	rep.ControlLeader = leader
	rep.ControlPlanes = cps
}

// askControlPlane asks the control plane at addr alone (not round the
// others, as ctlplane.Dial would) for its ControlPlaneStatus.
func askControlPlane(ctx context.Context, addr string) (*pb.ControlPlaneStatusResponse, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	actx, cancel := context.WithTimeout(ctx, controlPlaneAskTimeout)
	defer cancel()
	return pb.NewControlPlaneClient(conn).ControlPlaneStatus(actx, &pb.ControlPlaneStatusRequest{}, grpc.WaitForReady(false))
}

// printControlPlanes is status's section on the control planes.
func printControlPlanes(out io.Writer, rep *statusReport) {
	if len(rep.ControlPlanes) == 0 {
		return
	}
	up := 0
	for _, c := range rep.ControlPlanes {
		if c.Up {
			up++
		}
	}
	head := fmt.Sprintf("Control planes: %d of %d answer", up, len(rep.ControlPlanes))
	switch {
	case rep.ControlLeader != "":
		head += ", " + rep.ControlLeader + " leads"
	case rep.ControlLeaderError != "":
		head += ", none leads: " + rep.ControlLeaderError
	default:
		head += ", none leads"
	}
	if n := len(rep.ControlPlanes); n >= 3 && up*2 <= n {
		head += fmt.Sprintf(" (the catalog needs a majority of the %d: it is read-only or unreachable, and the writer cannot renew its lease)", n)
	}
	fmt.Fprintln(out, head)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "CONTROL\tAZ\tADDRESS\tSTATE\n")
	for _, c := range rep.ControlPlanes {
		state := "up"
		if !c.Up {
			state = "DOWN  <--"
			if c.Error != "" {
				state += " " + strings.TrimSpace(c.Error)
			}
		}
		if c.Leader {
			state += ", leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", orDash(c.Name), orDash(c.AZ), c.Addr, state)
	}
	tw.Flush()
}
