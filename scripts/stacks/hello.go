// Sends one ClientHello with Go's crypto/tls to 127.0.0.1:PORT, SNI
// login.microsoftonline.com; the handshake is expected to fail (nothing answers).
// usage: go run hello.go PORT MIN MAX   (versions as 10, 11, 12, 13)
package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func version(s string) uint16 {
	switch s {
	case "10":
		return tls.VersionTLS10
	case "11":
		return tls.VersionTLS11
	case "12":
		return tls.VersionTLS12
	}
	return tls.VersionTLS13
}

func main() {
	cfg := &tls.Config{ServerName: "login.microsoftonline.com", MinVersion: version(os.Args[2]), MaxVersion: version(os.Args[3])}
	c, err := tls.Dial("tcp", "127.0.0.1:"+os.Args[1], cfg)
	if err == nil {
		c.Close()
	}
	fmt.Fprintln(os.Stderr, "expected:", err)
}
