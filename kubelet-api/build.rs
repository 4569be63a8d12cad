fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Generate only the sides the enabled features ask for: the CNI builds clients alone.
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    tonic_prost_build::configure()
        .build_client(feature("CLIENT"))
        .build_server(feature("SERVER"))
        // No generated `connect()`: clients get their transport from `unix` (a `Channel` or a plain connection).
        .build_transport(false)
        .compile_protos(
            &[
                "proto/deviceplugin_v1beta1.proto",
                "proto/podresources_v1.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
