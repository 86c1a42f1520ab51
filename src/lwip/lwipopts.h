/* lwipopts.h - lwIP as the connector's userspace TCP terminator.
 *
 * NO_SYS=1: lwIP runs inside the libuv loop, driven by sys_check_timeouts()
 * from a uv timer; no threads, no sequential or socket API. Sizes follow
 * lwip-notes.md: MSS from the tunnel MTU, window scaling for buffers above
 * 64 KiB, pools bounded so one slow backend cannot starve the others.
 */
#ifndef ZTNA_LWIPOPTS_H
#define ZTNA_LWIPOPTS_H

#define NO_SYS 1
#define LWIP_TIMERS 1
#define SYS_LIGHTWEIGHT_PROT 0
#define LWIP_NETCONN 0
#define LWIP_SOCKET 0
#define LWIP_NETIF_API 0

#define LWIP_IPV4 1
#define LWIP_IPV6 1
#define LWIP_TCP 1
/* One slot: the connector hears when lwIP frees a pcb, whatever the path
 * (TIME_WAIT reuse among them, which has no other callback). */
#define LWIP_TCP_PCB_NUM_EXT_ARGS 1
#define LWIP_UDP 0
#define LWIP_ICMP 0
#define LWIP_ICMP6 1
#define LWIP_RAW 0
#define LWIP_ARP 0
#define LWIP_ETHERNET 0
#define LWIP_DHCP 0
#define LWIP_AUTOIP 0
#define LWIP_IGMP 0
#define LWIP_DNS 0
#define LWIP_IPV6_MLD 0
#define LWIP_IPV6_AUTOCONFIG 0
#define LWIP_IPV6_DHCP6 0
#define LWIP_IPV6_FRAG 0
#define LWIP_IPV6_REASS 0
#define IP_REASSEMBLY 0
#define IP_FRAG 0
#define LWIP_ND6_QUEUEING 0
/* The netif's IPv6 address is set ready to use: no router solicitation,
 * no duplicate address detection on a link that does not exist. */
#define LWIP_IPV6_SEND_ROUTER_SOLICIT 0
#define LWIP_IPV6_DUP_DETECT_ATTEMPTS 0

#define MEM_ALIGNMENT 8
#define MEM_SIZE (32 * 1024 * 1024)
#define MEMP_NUM_PBUF 1024
#define PBUF_POOL_SIZE 1024
#define MEMP_NUM_TCP_PCB 1024
#define MEMP_NUM_TCP_PCB_LISTEN 16
#define MEMP_NUM_TCP_SEG 32768
#define MEMP_NUM_SYS_TIMEOUT 16

/* Tunnel MTU 1280 minus IPv6 (40) and TCP (20) headers. */
#define TCP_MSS 1220
#define LWIP_WND_SCALE 1
#define TCP_RCV_SCALE 3
#define TCP_WND (256 * 1024)
#define TCP_SND_BUF (128 * 1024)
#define TCP_SND_QUEUELEN (4 * TCP_SND_BUF / TCP_MSS)
#define TCP_SNDLOWAT 32768
#define TCP_QUEUE_OOSEQ 1
/* Timers tick every 10 ms (slow timer 20 ms) instead of 250/500 ms: the
 * tunnel's RTT is milliseconds, and lwIP's retransmission timeout is
 * counted in slow-timer ticks, so recovery from loss is 25 times faster. */
#define TCP_TMR_INTERVAL 10
#define LWIP_TCP_SACK_OUT 1
#define LWIP_TCP_KEEPALIVE 1
#define TCP_LISTEN_BACKLOG 0

/* QUIC protects integrity; the connector verifies checksums itself before
 * handing a packet to lwIP (protocol.md 7), and lwIP generates them. */
#define CHECKSUM_CHECK_IP 0
#define CHECKSUM_CHECK_TCP 0
#define LWIP_CHECKSUM_ON_COPY 1

#define LWIP_STATS 0
#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_SINGLE_NETIF 1

#endif
