// podresources-relay serves the kubelet's PodResources v1 API on one unix socket by asking the kubelet stand-in
// on another. It exists for one reason: Multus' PodResources client (grpc-go, dialing a plain socket path) sends
// that path as the HTTP/2 :authority. The real kubelet's Go server accepts it; the stand-in's Rust (h2) server
// rejects it as malformed. This relay is a Go server like the kubelet's, and dials upstream with :authority
// "localhost", as the kubelet itself does when it dials device plugins.
//
// Usage: podresources-relay -listen <socket> -upstream <socket>
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresources "k8s.io/kubelet/pkg/apis/podresources/v1"
)

type relay struct {
	podresources.UnimplementedPodResourcesListerServer
	upstream podresources.PodResourcesListerClient
}

func (r *relay) List(ctx context.Context, req *podresources.ListPodResourcesRequest) (*podresources.ListPodResourcesResponse, error) {
	return r.upstream.List(ctx, req)
}

func (r *relay) Get(ctx context.Context, req *podresources.GetPodResourcesRequest) (*podresources.GetPodResourcesResponse, error) {
	return r.upstream.Get(ctx, req)
}

func (r *relay) GetAllocatableResources(ctx context.Context, req *podresources.AllocatableResourcesRequest) (*podresources.AllocatableResourcesResponse, error) {
	return r.upstream.GetAllocatableResources(ctx, req)
}

func main() {
	listen := flag.String("listen", "", "unix socket to serve on")
	upstream := flag.String("upstream", "", "unix socket of the kubelet stand-in's PodResources server")
	flag.Parse()
	if *listen == "" || *upstream == "" {
		log.Fatal("-listen and -upstream are required")
	}
	conn, err := grpc.NewClient("unix://"+*upstream,
		grpc.WithAuthority("localhost"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("upstream %s: %v", *upstream, err)
	}
	_ = os.Remove(*listen)
	lis, err := net.Listen("unix", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	srv := grpc.NewServer()
	podresources.RegisterPodResourcesListerServer(srv, &relay{upstream: podresources.NewPodResourcesListerClient(conn)})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil {
		log.Printf("serve: %v", err)
	}
	_ = os.Remove(*listen)
}
