// Package api holds the protobuf definitions of Borealis; the generated Go
// code lives in api/borealispb and is committed.
package api

//go:generate protoc --go_out=.. --go_opt=module=github.com/borealis-db/borealis --go-grpc_out=.. --go-grpc_opt=module=github.com/borealis-db/borealis storage.proto control.proto replication.proto controlplane.proto
