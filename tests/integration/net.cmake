# net/ against real nftables, dnsmasq, bridges, veths and busybox udhcpc, each test inside
# network namespaces it creates (needs root, ip, nft, dnsmasq, busybox, python3).
edgevirt_add_test(NAME net_dataplane_test SOURCES net_dataplane_test.cc
  LIBS edgevirt_net edgevirt_store LABELS integration TIMEOUT 120)
