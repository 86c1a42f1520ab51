#ifndef ZTNA_VERSION_H
#define ZTNA_VERSION_H
#define ZTNA_VERSION "0.1.0"
#endif
