// Private to cgroup/ (and bench/devices, which builds its reference program with it): a few
// constructors of eBPF instructions, the subset the device programs need. The kernel's
// equivalents (BPF_MOV64_IMM, ... in include/linux/filter.h) are not installed as UAPI headers.
#pragma once

#include <linux/bpf.h>

#include <cstdint>

namespace edgevirt::cgroup::bpf {

constexpr bpf_insn Insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}

// dst = *(u32 *)(src + off)
constexpr bpf_insn LoadU32(uint8_t dst, uint8_t src, int16_t off) {
  return Insn(BPF_LDX | BPF_W | BPF_MEM, dst, src, off, 0);
}
// *(u32 *)(dst + off) = src
constexpr bpf_insn StoreU32(uint8_t dst, int16_t off, uint8_t src) {
  return Insn(BPF_STX | BPF_W | BPF_MEM, dst, src, off, 0);
}
// *(u32 *)(dst + off) = imm
constexpr bpf_insn StoreU32Imm(uint8_t dst, int16_t off, int32_t imm) {
  return Insn(BPF_ST | BPF_W | BPF_MEM, dst, 0, off, imm);
}
// 32-bit ALU with an immediate (the upper half of dst is zeroed): BPF_AND, BPF_RSH, BPF_MOV...
constexpr bpf_insn Alu32Imm(uint8_t op, uint8_t dst, int32_t imm) {
  return Insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm);
}
constexpr bpf_insn Alu32Reg(uint8_t op, uint8_t dst, uint8_t src) {
  return Insn(BPF_ALU | op | BPF_X, dst, src, 0, 0);
}
constexpr bpf_insn Alu64Imm(uint8_t op, uint8_t dst, int32_t imm) {
  return Insn(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
}
constexpr bpf_insn Mov64Reg(uint8_t dst, uint8_t src) {
  return Insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0);
}
constexpr bpf_insn Mov64Imm(uint8_t dst, int32_t imm) {
  return Insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm);
}
// if (dst <op> imm) goto pc + 1 + off   (op: BPF_JEQ, BPF_JNE, ...)
constexpr bpf_insn JmpImm(uint8_t op, uint8_t dst, int32_t imm, int16_t off) {
  return Insn(BPF_JMP | op | BPF_K, dst, 0, off, imm);
}
constexpr bpf_insn JmpReg(uint8_t op, uint8_t dst, uint8_t src, int16_t off) {
  return Insn(BPF_JMP | op | BPF_X, dst, src, off, 0);
}
constexpr bpf_insn Call(int32_t helper) { return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper); }
constexpr bpf_insn Exit() { return Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
// dst = map (two instructions: a 64-bit immediate load the verifier resolves from the fd).
constexpr bpf_insn LoadMapFd0(uint8_t dst, int map_fd) {
  return Insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd);
}
constexpr bpf_insn LoadMapFd1() { return Insn(0, 0, 0, 0, 0); }

// Offsets in struct bpf_cgroup_dev_ctx.
inline constexpr int16_t kCtxAccessType = 0;  // (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*
inline constexpr int16_t kCtxMajor = 4;
inline constexpr int16_t kCtxMinor = 8;

}  // namespace edgevirt::cgroup::bpf
