{
  # Levee: the dev shell (Rust toolchain plus the image builder's tools) and
  # the two binaries. Nix cannot fetch its inputs on the project's build
  # machines; CI only checks that this file parses (`nix-instantiate --parse`).
  description = "Levee: PXE-boot blank machines into backup appliances";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # One workspace build; each package installs one binary of it.
      levee = pkgs: bin: pkgs.rustPlatform.buildRustPackage {
        pname = bin;
        version = "0.1.0";
        src = ./.;
        cargoLock.lockFile = ./Cargo.lock;
        cargoBuildFlags = [ "--bin" bin ];
        # The workspace tests boot QEMU VMs as root; run them outside Nix.
        doCheck = false;
        meta.mainProgram = bin;
      };
    in {
      packages = forAll (pkgs: {
        levee = levee pkgs "levee";
        levee-agent = levee pkgs "levee-agent";
        default = self.packages.${pkgs.system}.levee;
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            # Rust
            cargo rustc rustfmt clippy rust-analyzer
            # image builder (levee image build)
            mmdebstrap debootstrap dpkg apt squashfsTools busybox kmod cpio zstd
            # boot tests
            qemu OVMF ipxe dnsmasq iproute2
          ];
        };
      });
    };
}
