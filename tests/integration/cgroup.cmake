# cgroup/ against the real kernel: cgroups under the discovered cgroup2 mount, an eBPF device
# filter attached through a pinned bpf_link, a loop device as the disk (needs root, bpffs at
# /sys/fs/bpf and losetup). RUN_SERIAL: it attaches and detaches loop devices.
edgevirt_add_test(NAME cgroup_device_test SOURCES cgroup_device_test.cc LIBS edgevirt_cgroup
  LABELS integration TIMEOUT 120 RUN_SERIAL)
